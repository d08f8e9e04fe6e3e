"""Bad model names, files, registries and downloads: one line each, and nothing outside the case changes.

Every case goes through the public surface (the `pixgen` CLI, or the library functions the CLI
calls) and checks the exit code, that the message is one line naming the file or key, that no
traceback is shown, and that no file outside the case's own folder was created, changed or deleted.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import save_file

from pixgen.cli import cli
from pixgen.errors import PixgenError
from tests.conftest import TINY_CLIP, TINY_VQGAN, tiny_clip_state, tiny_vqgan_state
from tests.test_downloads import server  # noqa: F401  (the 127.0.0.1 HTTP server fixture)

SHIPPED_REGISTRY = Path(__file__).resolve().parent.parent / "pixgen" / "checkpoints.yaml"


# --- helpers -----------------------------------------------------------------------------------

def tree(root: Path, skip: Path | None = None) -> dict[str, str]:
    """Every file (and symlink) under root with a hash of its bytes."""
    found = {}
    for path in sorted(root.rglob("*")):
        if skip is not None and path.is_relative_to(skip):
            continue
        if path.is_symlink():
            found[str(path)] = "link->" + str(path.readlink())
        elif path.is_file():
            found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def invoke(*args) -> object:
    return CliRunner().invoke(cli, [str(a) for a in args])


def error_line(output: str) -> str:
    """The one `Error:` line of a failed command (and nothing that looks like a traceback)."""
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, output
    return errors[0]


def tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.contiguous() for k, v in state.items()}


@dataclass
class Case:
    """One bad input and what must come of it."""

    build: Callable[[Path, dict], list]  # (case folder, tiny models) -> CLI args
    exit_code: int
    says: tuple[str, ...]  # fragments the error line must hold ({case} is the case folder)
    env: dict[str, str] = field(default_factory=dict)  # {case} is replaced


@pytest.fixture
def case(tmp_path, tiny_models, monkeypatch):
    """A case folder beside a cache with a neighbour folder that must never change."""
    home = tmp_path / "root" / "cache"
    monkeypatch.setenv("PIXGEN_HOME", str(home))
    home.mkdir(parents=True)
    (home / "keep.txt").write_text("a file in the cache")
    (tmp_path / "root" / "neighbour.txt").write_text("a file beside the cache")
    folder = tmp_path / "case"
    folder.mkdir()
    return folder


def run_case(case_: Case, folder: Path, tiny_models, monkeypatch) -> None:
    args = case_.build(folder, tiny_models)
    for name, value in case_.env.items():
        monkeypatch.setenv(name, value.format(case=folder))
    root = folder.parent
    before = tree(root, skip=folder / "out")
    shared = tree(tiny_models["folder"])
    result = invoke(*args)
    assert result.exit_code == case_.exit_code, result.output
    line = error_line(result.output)
    for fragment in case_.says:
        assert fragment.format(case=folder) in line, line
    assert "weights_only=False" not in result.output
    assert tree(root, skip=folder / "out") == before
    assert tree(tiny_models["folder"]) == shared


# --- inputs of the cases ---------------------------------------------------------------------

def import_as(name: str) -> Callable[[Path, dict], list]:
    def build(folder: Path, tiny: dict) -> list:
        return ["models", "import", "--config", tiny["vqgan_yaml"], "--ckpt", tiny["vqgan_ckpt"], "--", name]
    return build


def remove(name: str) -> Callable[[Path, dict], list]:
    return lambda folder, tiny: ["models", "remove", "--", name]


def run_with(vqgan: Callable[[Path, dict], str] | None = None,
             clip: Callable[[Path, dict], str] | None = None) -> Callable[[Path, dict], list]:
    def build(folder: Path, tiny: dict) -> list:
        return ["run", "a red circle", "-q", "--device", "cpu", "--steps", "1", "--size", "32",
                "--vqgan", vqgan(folder, tiny) if vqgan else "tiny-vqgan",
                "--clip", clip(folder, tiny) if clip else "tiny-clip", "-o", folder / "out"]
    return build


def safetensors_file(content: bytes) -> Callable[[Path, dict], str]:
    def make(folder: Path, tiny: dict) -> str:
        (folder / "m.safetensors").write_bytes(content)
        return str(folder / "m.safetensors")
    return make


def truncated_safetensors(folder: Path, tiny: dict) -> str:
    whole = tiny["vqgan_safetensors"].read_bytes()
    (folder / "m.safetensors").write_bytes(whole[: len(whole) // 2])
    return str(folder / "m.safetensors")


def metadata_safetensors(metadata: str) -> Callable[[Path, dict], str]:
    def make(folder: Path, tiny: dict) -> str:
        save_file(tensors(tiny_vqgan_state()), folder / "m.safetensors", metadata={"pixgen_vqgan": metadata})
        return str(folder / "m.safetensors")
    return make


def vqgan_yaml(text: str) -> Callable[[Path, dict], str]:
    def make(folder: Path, tiny: dict) -> str:
        (folder / "model.yaml").write_text(text)
        return f"{folder / 'model.yaml'},{tiny['vqgan_ckpt']}"
    return make


def incomplete_yaml(folder: Path, tiny: dict) -> str:
    data = yaml.safe_load(tiny["vqgan_yaml"].read_text())
    del data["model"]["params"]["ddconfig"]["z_channels"]
    return vqgan_yaml(yaml.safe_dump(data))(folder, tiny)


def bad_ckpt(kind: str) -> Callable[[Path, dict], str]:
    def make(folder: Path, tiny: dict) -> str:
        path = folder / "last.ckpt"
        if kind == "truncated":
            whole = tiny["vqgan_ckpt"].read_bytes()
            path.write_bytes(whole[: len(whole) // 3])
        else:
            torch.save({"state_dict": tiny_vqgan_state(), "x": _Planted(folder / "PWNED")}, path)
        return f"{tiny['vqgan_yaml']},{path}"
    return make


class _Planted:
    """Unpickling this would write a file: the classic planted checkpoint."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def clip_json(text: str) -> Callable[[Path, dict], str]:
    def make(folder: Path, tiny: dict) -> str:
        (folder / "clip.json").write_text(text)
        save_file(tensors(tiny_clip_state()), folder / "clip.safetensors")
        return str(folder / "clip.json")
    return make


def cache_registry(content: bytes | str, *args: str) -> Callable[[Path, dict], list]:
    def build(folder: Path, tiny: dict) -> list:
        path = folder.parent / "root" / "cache" / "registry.yaml"
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return list(args) or ["run", "x", "-q", "-o", folder / "out"]
    return build


def user_registry(entries: dict, *args: str) -> Callable[[Path, dict], list]:
    def build(folder: Path, tiny: dict) -> list:
        (folder / "extra.yaml").write_text(yaml.safe_dump(entries))
        return list(args) or ["models", "list"]
    return build


def vqgan_entry(**files) -> dict:
    spec = {"urls": ["https://example.invalid/m.ckpt"], "sha256": None, "pinned": "first-download", **files}
    return {"vqgan": {"x": {"architecture": TINY_VQGAN, "files": {"checkpoint": spec}}}}


EXTRA = {"PIXGEN_REGISTRY": "{case}/extra.yaml"}
REGISTRY_FILE = "{case}/extra.yaml"
CACHE_REGISTRY = "cache/registry.yaml"

CASES = {
    # names are names
    "import ../..": Case(import_as("../.."), 2, ("'../..' is not a valid model name",)),
    "import ..": Case(import_as(".."), 2, ("'..' is not a valid model name",)),
    "import .": Case(import_as("."), 2, ("'.' is not a valid model name",)),
    "import a/b": Case(import_as("a/b"), 2, ("'a/b' is not a valid model name",)),
    "import backslash": Case(import_as("a\\b"), 2, ("is not a valid model name",)),
    "import empty": Case(import_as(""), 2, ("'' is not a valid model name",)),
    "import NUL": Case(import_as("a\0b"), 2, ("is not a valid model name",)),
    "import leading dash": Case(import_as("-rf"), 2, ("'-rf' is not a valid model name",)),
    "import absolute": Case(import_as("/tmp/x"), 2, ("'/tmp/x' is not a valid model name",)),
    "remove ../..": Case(remove("../.."), 2, ("'../..' is not a valid model name",)),
    "remove ..": Case(remove(".."), 2, ("'..' is not a valid model name",)),
    "remove cache root by name": Case(remove("."), 2, ("'.' is not a valid model name",)),
    "cache registry names ../..": Case(
        cache_registry(yaml.safe_dump({"vqgan": {"../..": {"architecture": TINY_VQGAN,
                                                           "bundled": {"path": "vqgan/x/slim.safetensors"}}}}),
                       "models", "remove", "--", "x"),
        2, (CACHE_REGISTRY, "vqgan entry '../..'", "not a valid model name")),
    "cache registry path outside the cache": Case(
        cache_registry(yaml.safe_dump({"vqgan": {"evil": {"architecture": TINY_VQGAN,
                                                          "bundled": {"path": "../neighbour.txt"}}}}),
                       "models", "remove", "evil"),
        2, (CACHE_REGISTRY, "'evil'", "points outside the pixgen cache")),
    "user registry name with a slash": Case(
        user_registry({"clip": {"a/b": {"config": "c.json", "bundled": {"path": "w.safetensors"}}}}),
        2, (REGISTRY_FILE, "clip entry 'a/b'", "not a valid model name"), EXTRA),
    # bad files
    "truncated safetensors": Case(run_with(vqgan=truncated_safetensors), 1,
                                  ("{case}/m.safetensors", "not a readable safetensors file")),
    "text named .safetensors": Case(run_with(vqgan=safetensors_file(b"<html>not weights</html>")), 1,
                                    ("{case}/m.safetensors", "not a readable safetensors file")),
    "empty safetensors": Case(run_with(vqgan=safetensors_file(b"")), 1, ("{case}/m.safetensors",)),
    "metadata not JSON": Case(run_with(vqgan=metadata_safetensors("{not json")), 1,
                              ("{case}/m.safetensors", "pixgen_vqgan metadata is not JSON")),
    "metadata not a config": Case(run_with(vqgan=metadata_safetensors(json.dumps({"embed_dim": 8}))), 1,
                                  ("{case}/m.safetensors", "n_embed must be a positive integer")),
    "incomplete VQGAN yaml": Case(run_with(vqgan=incomplete_yaml), 1,
                                  ("{case}/model.yaml", "ddconfig.z_channels must be a positive integer")),
    "VQGAN yaml is a list": Case(run_with(vqgan=vqgan_yaml("- 1\n- 2\n")), 1,
                                 ("{case}/model.yaml", "not a taming VQGAN config")),
    "VQGAN yaml is not YAML": Case(run_with(vqgan=vqgan_yaml("model: [unclosed\n")), 1,
                                   ("{case}/model.yaml", "not a readable taming VQGAN config")),
    "truncated ckpt": Case(run_with(vqgan=bad_ckpt("truncated")), 1,
                           ("last.ckpt", "is not a readable PyTorch checkpoint")),
    "planted pickle ckpt": Case(run_with(vqgan=bad_ckpt("planted")), 1,
                                ("last.ckpt contains code or objects", "will not unpickle")),
    "empty CLIP config.json": Case(run_with(clip=clip_json("")), 1,
                                   ("{case}/clip.json", "is not JSON")),
    "CLIP config.json {}": Case(run_with(clip=clip_json("{}")), 1, ("{case}/clip.json", "no vision_cfg")),
    "CLIP config.json a list": Case(run_with(clip=clip_json("[1]")), 1,
                                    ("{case}/clip.json", "must be a JSON object")),
    "CLIP config.json wrong types": Case(
        run_with(clip=clip_json(json.dumps({**TINY_CLIP, "vision_cfg": {**TINY_CLIP["vision_cfg"],
                                                                        "layers": "many"}}))),
        1, ("{case}/clip.json", "not a usable open_clip model config")),
    # registries
    "cache registry not YAML breaks run in one line": Case(
        cache_registry("vqgan: [unclosed\n"), 2, (CACHE_REGISTRY, "is not valid YAML", "fix or delete it")),
    "cache registry not UTF-8": Case(cache_registry(b"\xff\xfe\x00bad"), 2,
                                     (CACHE_REGISTRY, "is not UTF-8", "fix or delete it")),
    "cache registry a list": Case(cache_registry("- a\n- b\n"), 2, (CACHE_REGISTRY, "must be a mapping")),
    "cache registry section a list": Case(cache_registry("vqgan: [a, b]\n", "models", "list"), 2,
                                          (CACHE_REGISTRY, "section 'vqgan' must be a mapping")),
    "entry is a string": Case(user_registry({"vqgan": {"x": "big"}}), 2,
                              (REGISTRY_FILE, "vqgan entry 'x'", "must be a mapping"), EXTRA),
    "files is a list": Case(user_registry({"vqgan": {"x": {"architecture": TINY_VQGAN, "files": ["u"]}}}), 2,
                            (REGISTRY_FILE, "vqgan entry 'x'", "files must be a mapping"), EXTRA),
    "null sha256 without pinned": Case(user_registry(vqgan_entry(pinned=None)), 2,
                                       (REGISTRY_FILE, "'x'", "needs `pinned: first-download`"), EXTRA),
    "sha256 not hex": Case(user_registry(vqgan_entry(sha256="abc", pinned=None)), 2,
                           (REGISTRY_FILE, "'x'", "sha256 must be 64 hex digits"), EXTRA),
    "urls a string": Case(user_registry(vqgan_entry(urls="https://x/m.ckpt")), 2,
                          (REGISTRY_FILE, "'x'", "urls must be a non-empty list"), EXTRA),
    "size negative": Case(user_registry(vqgan_entry(size=-5)), 2,
                          (REGISTRY_FILE, "'x'", "size must be a positive number"), EXTRA),
    "architecture incomplete": Case(
        user_registry({"vqgan": {"x": {"architecture": {"embed_dim": 8, "n_embed": 4},
                                       "files": vqgan_entry()["vqgan"]["x"]["files"]}}}),
        2, (REGISTRY_FILE, "'x'", "ddconfig is missing"), EXTRA),
    "unknown entry key": Case(user_registry({"clip": {"x": {"model": "RN50", "sha": 1,
                                                            "bundled": {"path": "w.safetensors"}}}}),
                              2, (REGISTRY_FILE, "clip entry 'x'", "unknown key 'sha'"), EXTRA),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_and_changes_nothing(name, case, tiny_models, monkeypatch):
    run_case(CASES[name], case, tiny_models, monkeypatch)
    assert not (case / "PWNED").exists()


# --- the path escapes of issue 11, as a user would try them -------------------------------------

def test_import_then_remove_dot_dot_cannot_touch_the_folder_above_the_cache(case, tiny_models):
    above = case.parent / "root"
    before = tree(above)
    imported = invoke("models", "import", "--config", tiny_models["vqgan_yaml"], "--ckpt", tiny_models["vqgan_ckpt"],
                      "../..")
    removed = invoke("models", "remove", "../..")
    assert (imported.exit_code, removed.exit_code) == (2, 2)
    assert "not a valid model name" in error_line(imported.output)
    assert "not a valid model name" in error_line(removed.output)
    assert tree(above) == before


def test_symlinked_model_folder_is_not_followed_by_remove(case, tiny_models):
    home = case.parent / "root" / "cache"
    assert invoke("models", "import", "mine", "--config", tiny_models["vqgan_yaml"],
                  "--ckpt", tiny_models["vqgan_ckpt"]).exit_code == 0
    victim = case / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    folder = home / "vqgan" / "mine"
    (victim / "slim.safetensors").write_bytes((folder / "slim.safetensors").read_bytes())
    for path in folder.iterdir():
        path.unlink()
    folder.rmdir()
    folder.symlink_to(victim, target_is_directory=True)
    result = invoke("models", "remove", "mine")
    assert result.exit_code == 2  # the cache's registry now points outside the cache: refused on reading
    assert "registry.yaml: vqgan entry 'mine' points outside the pixgen cache" in error_line(result.output)
    assert (victim / "precious.txt").read_text() == "keep me"


@pytest.mark.parametrize("what", ["record_hash", "forget_hashes", "remove_model"])
def test_library_refuses_paths_outside_the_cache(case, what):
    from pixgen.models import store as model_store
    from pixgen.models.registry import ModelEntry

    outside = case.parent / "root"
    (outside / "cache" / "vqgan").mkdir()  # so that cache/vqgan/../.. exists: the folder above the cache
    before = tree(outside)
    with pytest.raises(PixgenError) as info:
        if what == "record_hash":
            model_store.record_hash(outside / "neighbour.txt", "0" * 64)
        elif what == "forget_hashes":
            model_store.forget_hashes(outside)
        else:
            model_store.remove_model(ModelEntry(kind="vqgan", name="../..", files={}))
    assert "\n" not in str(info.value)
    assert tree(outside) == before


# --- downloads that cannot be verified are not trusted --------------------------------------------

def _served_registry(case: Path, srv, monkeypatch, tiny_registry, routes: dict[str, bytes],
                     kind: str, urls: list[str], **spec) -> None:
    for path, data in routes.items():
        srv.route(path, data=data)
    files = {"urls": [srv.base + u for u in urls], "sha256": None, "pinned": "first-download", **spec}
    if kind == "vqgan":
        entry = {"architecture": TINY_VQGAN, "files": {"checkpoint": files}}
    else:
        entry = {"config": str(tiny_registry.parent / "clip.json"), "files": {"weights": files}}
    (case / "served.yaml").write_text(yaml.safe_dump({kind: {"served": entry}}))
    monkeypatch.setenv("PIXGEN_REGISTRY", f"{tiny_registry}:{case / 'served.yaml'}")


def _clip_bytes(state: dict[str, torch.Tensor], folder: Path) -> bytes:
    save_file(tensors(state), folder / "tmp.safetensors")
    data = (folder / "tmp.safetensors").read_bytes()
    (folder / "tmp.safetensors").unlink()
    return data


def _vqgan_ckpt_bytes(folder: Path, config: dict = TINY_VQGAN) -> bytes:
    from pixgen.models.vqgan import VQGAN, VQGANConfig

    torch.save({"state_dict": VQGAN(VQGANConfig.from_dict(config)).state_dict()}, folder / "tmp.ckpt")
    data = (folder / "tmp.ckpt").read_bytes()
    (folder / "tmp.ckpt").unlink()
    return data


HTML = b"<!DOCTYPE html><html><body>Rate limit exceeded. Try again later.</body></html>"


@pytest.mark.parametrize("kind,body", [
    ("vqgan", "html"), ("clip", "html"), ("vqgan", "other-architecture"), ("clip", "other-architecture"),
])
def test_download_that_does_not_load_is_deleted_and_never_trusted(case, server, monkeypatch, tiny_registry,  # noqa: F811
                                                                    kind, body):
    if body == "html":
        data = HTML  # a mirror answering 200 with an error page sent as application/octet-stream
    elif kind == "vqgan":
        data = _vqgan_ckpt_bytes(case, {**TINY_VQGAN, "n_embed": 64})
    else:
        data = _clip_bytes({k: v[..., :1] if v.ndim else v for k, v in tiny_clip_state().items()}, case)
    _served_registry(case, server, monkeypatch, tiny_registry, {"/m": data}, kind, ["/m"])
    home = case.parent / "root" / "cache"
    before = tree(case.parent)
    result = invoke("models", "download", "served", "-q")
    assert result.exit_code == 1
    line = error_line(result.output)
    assert "failed the load check" in line and "the download was deleted" in line and "/m" in line
    assert tree(case.parent) == before  # no part file, no hash record, nothing moved into place
    assert not (home / "known_hashes.yaml").exists()
    listing = invoke("models", "list").output
    assert "not downloaded" in listing.split("served")[1].splitlines()[0]
    verify = invoke("models", "verify", "served")
    assert verify.exit_code == 0 and "served: not downloaded" in verify.output


def test_junk_mirror_is_skipped_for_the_next_one(case, server, monkeypatch, tiny_registry):  # noqa: F811
    good = _clip_bytes(tiny_clip_state(seed=5), case)
    _served_registry(case, server, monkeypatch, tiny_registry, {"/junk": HTML, "/good": good}, "clip",
                     ["/junk", "/good"])
    result = invoke("models", "download", "served", "-q")
    assert result.exit_code == 0, result.output
    assert [path for path, _ in server.seen] == ["/junk", "/good"]
    weights = case.parent / "root" / "cache" / "clip" / "served" / "weights.safetensors"
    assert weights.read_bytes() == good
    recorded = yaml.safe_load((case.parent / "root" / "cache" / "known_hashes.yaml").read_text())
    assert recorded == {"clip/served/weights.safetensors": hashlib.sha256(good).hexdigest()}


def _torchscript_clip(folder: Path, seed: int) -> bytes:
    """A tiny CLIP saved as TorchScript, as OpenAI's archives are."""
    import warnings

    import open_clip

    torch.manual_seed(seed)
    model = open_clip.CLIP(**{k: v for k, v in TINY_CLIP.items() if k != "preprocess_cfg"}).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, (torch.rand(1, 3, 32, 32), torch.zeros(1, 16, dtype=torch.long)),
                                 strict=False, check_trace=False)
    torch.jit.save(traced, str(folder / "tmp.pt"))
    data = (folder / "tmp.pt").read_bytes()
    (folder / "tmp.pt").unlink()
    return data


@pytest.mark.parametrize("pinned_right", [True, False])
def test_openai_alternative_is_loaded_only_after_its_pinned_hash_matches(case, server, monkeypatch,  # noqa: F811
                                                                         tiny_registry, pinned_right):
    archive = _torchscript_clip(case, seed=6)
    digest = hashlib.sha256(archive).hexdigest() if pinned_right else "0" * 64
    server.route("/ViT.pt", data=archive)
    alternative = {"urls": [server.base + "/ViT.pt"], "sha256": digest, "format": "openai-torchscript"}
    _served_registry(case, server, monkeypatch, tiny_registry, {}, "clip", ["/gone"], alternatives=[alternative])
    calls = []
    real_jit_load = torch.jit.load
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: calls.append(a) or real_jit_load(*a, **k))
    folder = case.parent / "root" / "cache" / "clip" / "served"
    result = invoke("models", "download", "served", "-q")
    if pinned_right:
        assert result.exit_code == 0, result.output
        assert "converted from" in result.output and len(calls) == 1
        verify = invoke("models", "verify", "served")
        assert verify.exit_code == 0 and "served: recorded" in verify.output
        assert sorted(p.name for p in folder.iterdir()) == ["weights.safetensors"]
    else:
        assert result.exit_code == 1
        line = error_line(result.output)
        assert "/gone" in line and "0" * 64 in line and calls == []  # never loaded
        assert not folder.exists() or not any(folder.iterdir())


# --- models verify: statuses and exit codes --------------------------------------------------------

def test_verify_statuses_and_exit_codes(case, server, monkeypatch, tiny_registry):  # noqa: F811
    good = _clip_bytes(tiny_clip_state(seed=7), case)
    _served_registry(case, server, monkeypatch, tiny_registry, {"/good": good}, "clip", ["/good"])
    bundled = invoke("models", "verify", "tiny-vqgan")
    assert bundled.exit_code == 0 and "tiny-vqgan: registry " in bundled.output
    assert "matches the registry's sha256" in bundled.output
    assert invoke("models", "download", "served", "-q").exit_code == 0
    recorded = invoke("models", "verify", "served")
    assert recorded.exit_code == 0 and "served: recorded " in recorded.output

    home = case.parent / "root" / "cache"
    (home / "known_hashes.yaml").unlink()  # the record is gone: nothing vouches for the file
    unverified = invoke("models", "verify", "served")
    assert unverified.exit_code == 3 and "served: unverified " in unverified.output
    assert "loads, unverified" in unverified.output

    weights = home / "clip" / "served" / "weights.safetensors"
    weights.write_bytes(HTML)
    corrupt = invoke("models", "verify", "served")
    assert corrupt.exit_code == 1 and "served: corrupt " in corrupt.output
    assert "failed verification" in error_line(corrupt.output)

    (home / "known_hashes.yaml").write_text(yaml.safe_dump({"clip/served/weights.safetensors": "1" * 64}))
    mismatch = invoke("models", "verify", "served")
    assert mismatch.exit_code == 1 and "served: mismatch " in mismatch.output
    assert "the first download recorded " + "1" * 64 in mismatch.output


def test_corrupt_hash_record_is_one_line(case):
    home = case.parent / "root" / "cache"
    (home / "known_hashes.yaml").write_text("- not\n- a mapping\n")
    folder = home / "vqgan" / "vqgan_imagenet_f16_1024"
    folder.mkdir(parents=True)
    (folder / "slim.safetensors").write_bytes(b"downloaded earlier")
    result = invoke("models", "verify", "vqgan_imagenet_f16_1024")
    assert result.exit_code == 2
    assert "known_hashes.yaml is corrupt" in error_line(result.output)


# --- the shipped registry ---------------------------------------------------------------------------

def _shipped() -> dict:
    return yaml.safe_load(SHIPPED_REGISTRY.read_text(encoding="utf-8"))


def _downloadable() -> list[tuple[str, str, dict]]:
    return [(kind, name, entry) for kind, entries in _shipped().items() for name, entry in entries.items()
            if "files" in entry]


@pytest.mark.parametrize("kind,name,entry", _downloadable(), ids=lambda v: v if isinstance(v, str) else "")
def test_shipped_registry_entries_follow_the_schema(kind, name, entry):
    assert ("architecture" in entry) if kind == "vqgan" else ("model" in entry or "config" in entry)
    for spec in entry["files"].values():
        assert spec["urls"] and all(url.startswith("https://") for url in spec["urls"])
        assert not any(host in url for url in spec["urls"] for host in ("mirror.io.community", "eaidata.bmk.sh"))
        if spec["sha256"] is None:
            assert spec["pinned"] == "first-download"
        else:
            assert len(spec["sha256"]) == 64
        for alternative in spec.get("alternatives", []):
            (url,) = alternative["urls"]
            assert alternative["sha256"] in url  # OpenAI's URL carries the sha256 it is pinned to


def test_shipped_registry_has_the_models_users_ask_for():
    from pixgen.models.registry import BUILTIN_REGISTRY, read_registry_file

    entries = read_registry_file(BUILTIN_REGISTRY)
    codes = {name: entry.architecture["n_embed"] for name, entry in entries["vqgan"].items() if entry.architecture}
    assert codes["coco_f16_8192"] == 8192 and codes["sflckr_f16_1024"] == 1024
    assert codes["faceshq_f16_1024"] == 1024 and codes["wikiart_1024"] == 1024
    assert entries["vqgan"]["vqgan_imagenet_f16_1024"].files["checkpoint"].size == 957_954_257
    assert entries["vqgan"]["sflckr_f16_1024"].files["checkpoint"].size == 4_263_525_412
    openai = entries["clip"]["ViT-B-32-openai"].files["weights"].alternatives[0]
    assert openai.sha256 == "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af"


def test_models_list_shows_sizes_and_pin_status():
    listing = invoke("models", "list")
    assert listing.exit_code == 0
    line = next(row for row in listing.output.splitlines() if " vqgan_imagenet_f16_1024 " in row)
    assert "958.0 MB" in line and "pinned on download" in line
    line = next(row for row in listing.output.splitlines() if " tiny-vqgan " in row)
    assert "registry" in line and "MB" in line


def test_a_whole_transformer_checkpoint_gives_its_first_stage(case, tiny_models):
    state = {f"first_stage_model.{k}": v for k, v in tiny_vqgan_state(seed=8).items()}
    state["transformer.tok_emb.weight"] = torch.zeros(4, 4)
    torch.save({"state_dict": state}, case / "transformer.ckpt")
    result = invoke("models", "import", "whole", "--config", tiny_models["vqgan_yaml"],
                    "--ckpt", case / "transformer.ckpt")
    assert result.exit_code == 0, result.output


if sys.platform == "win32":  # pragma: no cover - symlinks need privileges there
    test_symlinked_model_folder_is_not_followed_by_remove = None  # noqa: F811
