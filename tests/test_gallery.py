"""The batch gallery: contact sheet, index.html content, and the page in a real headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixgen.batch.gallery import Card, tile_sheet, write_gallery

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

PROBE = """<script>
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var loaded = images.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  var box = document.getElementById("filter");
  box.value = "BLUE";
  box.dispatchEvent(new Event("input"));
  var shown = Array.prototype.slice.call(document.querySelectorAll(".card"))
    .filter(function (c) { return getComputedStyle(c).display !== "none"; })
    .map(function (c) { return c.getAttribute("data-job"); });
  var out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify({images: images.length, loaded: loaded, shown: shown});
  document.body.appendChild(out);
});
</script></body>"""


def make_cards(root: Path) -> list[Card]:
    cards = []
    for i, (prompt, colour) in enumerate([("a red circle", (200, 0, 0)), ("a blue square", (0, 0, 200)),
                                          ("a <b>blue</b> & \"odd\" one", (0, 0, 150)), ("a green one", (0, 150, 0))]):
        folder = f"job-{i}-abc"
        (root / folder).mkdir(parents=True)
        Image.fromarray(np.full((32, 32, 3), colour, np.uint8)).save(root / folder / "image.png")
        cards.append(Card(f"job-{i}", folder, prompt, i, "tiny", 6, 0.5 + i, True))
    cards.append(Card("later", "later-abc", "a blue triangle", 7, "tiny", 6, None, False))
    return cards


def test_index_escapes_text_uses_relative_paths_and_marks_pending(tmp_path):
    cards = make_cards(tmp_path)
    write_gallery(tmp_path, cards)
    page = (tmp_path / "index.html").read_text()
    assert page.count("<img ") == 4 and page.count('class="pending"') == 1
    assert "<b>blue</b>" not in page and "a &lt;b&gt;blue&lt;/b&gt; &amp; &quot;odd&quot; one" in page
    assert re.findall(r'src="([^"]+)"', page) == [f"job-{i}-abc/image.png" for i in range(4)]
    assert not re.search(r"(src|href)=\"(https?:|/)", page)
    assert "4 of 5 jobs done" in page
    sheet = Image.open(tmp_path / "contact-sheet.png")
    assert sheet.size == (5 * 128, 128 + 3 * 13 + 5)
    assert sheet.getpixel((10, 10)) == (200, 0, 0) and sheet.getpixel((4 * 128 + 10, 10)) == (220, 220, 220)


def test_tile_sheet_wraps_rows():
    sheet = tile_sheet([(None, ["a"])] * 10, tile=16, columns=4)
    assert sheet.size == (4 * 16, 3 * (16 + 13 + 5))


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium; .ci/run does it)")
def test_gallery_in_headless_chromium_loads_every_image_and_filters(tmp_path):
    cards = make_cards(tmp_path)
    write_gallery(tmp_path, cards)
    page = (tmp_path / "index.html").read_text().replace("</body>", PROBE)
    probe = tmp_path / "probe.html"
    probe.write_text(page)
    result = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--allow-file-access-from-files",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=90)
    found = re.search(r'<pre id="probe">(.*?)</pre>', result.stdout)
    assert found, result.stderr[-2000:]
    report = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert report["images"] == 4 and report["loaded"] == 4
    assert report["shown"] == ["job-1", "job-2", "later"]  # "blue" in the prompt, case-insensitive
