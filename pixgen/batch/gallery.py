"""What people look at after a batch: ``contact-sheet.png`` and a static ``index.html`` gallery.

The page needs no server and no external assets: images by relative path, inline CSS and a few
lines of inline JavaScript for the filter box. Both files are written atomically.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from PIL import Image, ImageDraw

from pixgen.fileio import atomic_path, atomic_write_text
from pixgen.pipeline.output import open_image
from pixgen.pipeline.runner import IMAGE_NAME

SHEET_NAME = "contact-sheet.png"
INDEX_NAME = "index.html"


@dataclass
class Card:
    """One job as the gallery shows it."""

    name: str
    folder: str  # relative to the batch folder
    prompt: str
    seed: int
    preset: str
    steps: int
    loss: float | None
    done: bool
    picture: str = IMAGE_NAME  # the file shown, relative to the job folder (an animation: its last frame)

    @property
    def image(self) -> str:
        """The image's path relative to the batch folder."""
        return f"{self.folder}/{self.picture}"


def tile_sheet(tiles: list[tuple[Path | None, list[str]]], tile: int = 128, columns: int = 8,
               colour: tuple[int, int, int] = (0, 0, 0)) -> Image.Image:
    """A grid of images (None: an empty grey tile), each with its caption lines underneath."""
    lines = max((len(caption) for _, caption in tiles), default=1)
    caption_height = 13 * lines + 5
    columns = max(1, min(columns, len(tiles)))
    rows = max(1, -(-len(tiles) // columns))
    sheet = Image.new("RGB", (columns * tile, rows * (tile + caption_height)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (path, caption) in enumerate(tiles):
        x, y = (i % columns) * tile, (i // columns) * (tile + caption_height)
        if path is None:
            draw.rectangle((x, y, x + tile - 1, y + tile - 1), fill=(220, 220, 220))
        else:
            with open_image(path, "image", hint="delete it (or its job folder) and run the batch again") as image:
                sheet.paste(image.convert("RGB").resize((tile, tile), Image.NEAREST), (x, y))
        for n, line in enumerate(caption):
            draw.text((x + 2, y + tile + 2 + 13 * n), _fit(line, tile), fill=colour)
    return sheet


def _fit(text: str, width: int) -> str:
    limit = max(4, width // 6)  # the default bitmap font is about 6 px per character
    return text if len(text) <= limit else text[: limit - 2] + ".."


def write_contact_sheet(root: Path, cards: list[Card]) -> Path:
    """Every job's image (grey while pending) captioned with its prompt, seed and preset."""
    tiles = [(root / card.image if card.done else None,
              [card.prompt, f"seed {card.seed}", card.preset if card.done else f"{card.preset} (pending)"])
             for card in cards]
    path = Path(root) / SHEET_NAME
    with atomic_path(path) as temp:
        tile_sheet(tiles).save(temp, format="PNG")
    return path


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>pixgen batch: {title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font: 14px system-ui, sans-serif; margin: 1em; background: #fafafa; }}
#filter {{ font-size: 16px; padding: .3em; width: min(30em, 90%); }}
#cards {{ display: flex; flex-wrap: wrap; gap: 12px; margin-top: 1em; }}
.card {{ width: 200px; background: white; border: 1px solid #ddd; padding: 6px; margin: 0; }}
.card img {{ width: 200px; height: 200px; image-rendering: pixelated; display: block; }}
.card .pending {{ width: 200px; height: 200px; background: #ddd; display: flex; align-items: center;
  justify-content: center; color: #666; }}
.card figcaption {{ margin-top: 4px; word-wrap: break-word; }}
.card .meta {{ color: #555; font-size: 12px; }}
.hidden {{ display: none; }}
</style></head><body>
<h1>pixgen batch: {title}</h1>
<p>{done} of {total} jobs done. <input id="filter" type="search" placeholder="filter: prompt, seed, preset, name"
 aria-label="filter"></p>
<div id="cards">
{cards}
</div>
<script>
(function () {{
  var box = document.getElementById("filter");
  function apply() {{
    var words = box.value.toLowerCase().split(/\\s+/).filter(Boolean);
    document.querySelectorAll(".card").forEach(function (card) {{
      var text = card.getAttribute("data-search");
      var show = words.every(function (w) {{ return text.indexOf(w) >= 0; }});
      card.classList.toggle("hidden", !show);
    }});
  }}
  box.addEventListener("input", apply);
  apply();
}})();
</script>
</body></html>
"""


def _card_html(card: Card) -> str:
    esc = html.escape
    search = " ".join([card.name, card.prompt, f"seed {card.seed}", card.preset]).lower()
    picture = (f'<img src="{esc(quote(card.image))}" alt="{esc(card.prompt)}">' if card.done
               else '<div class="pending">pending</div>')
    loss = f"{card.loss:.4f}" if card.loss is not None else "-"
    return (f'<figure class="card" data-search="{esc(search)}" data-job="{esc(card.name)}">{picture}'
            f'<figcaption><b>{esc(card.prompt)}</b><div class="meta">seed {card.seed} · preset {esc(card.preset)}'
            f' · {card.steps} steps · loss {loss}</div>'
            f'<div class="meta"><a href="{esc(quote(card.folder))}/">{esc(card.name)}</a></div></figcaption></figure>')


def write_index(root: Path, cards: list[Card], title: str | None = None) -> Path:
    """The static gallery page: a card per job and a filter box."""
    title = html.escape(title or Path(root).resolve().name)
    page = PAGE.format(title=title, done=sum(c.done for c in cards), total=len(cards),
                       cards="\n".join(_card_html(card) for card in cards))
    path = Path(root) / INDEX_NAME
    atomic_write_text(path, page)
    return path


def write_gallery(root: Path, cards: list[Card]) -> None:
    """Refresh both the contact sheet and index.html."""
    write_contact_sheet(root, cards)
    write_index(root, cards)

