"""Animations: frame schedules, motion, the frame-by-frame driver and video export."""
