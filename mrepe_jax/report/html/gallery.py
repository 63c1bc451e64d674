"""The gallery on a concept page's tower section (pure: results in, markup out), from
``results["gallery"]`` (``experiments.toyworld.gallery``): per value, the top- and bottom-scoring
test examples on its eq 6 direction with per-token heat (``examples``), and steering before and
after (eq 5): inputs whose zero-shot label moved, and the captioner's captions. Image paths are
relative to the stage's workdir; ``results["plot_dir"]`` prefixes them, as it does the plots."""

from __future__ import annotations

from collections.abc import Mapping

from mrepe_jax.report.html.examples import gallery
from mrepe_jax.report.html.pages import Files, esc, table


def _gallery(results: Mapping) -> Mapping:
    g = results.get("gallery")
    return g if isinstance(g, Mapping) else {}


def _images(node) -> list[str]:
    if isinstance(node, Mapping):
        return ([node["image"]] if isinstance(node.get("image"), str) else []) + [
            p for v in node.values() for p in _images(v)]
    if isinstance(node, list):
        return [p for v in node for p in _images(v)]
    return []


def files(results: Mapping) -> list[str]:
    """Every thumbnail the gallery shows (workdir-relative, ``plot_dir`` prefixed), once."""
    prefix = results.get("plot_dir", "")
    return list(dict.fromkeys(prefix + p for p in _images(_gallery(results))))


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def _extreme(ex: Mapping, prefix: str) -> dict:
    out = {"label": f"true: {ex.get('truth')}", "score": ex.get("score"), "heat": ex.get("heat")}
    if "image" in ex:
        out.update(image=prefix + str(ex["image"]), note=f"CLS {ex.get('cls', 0):.3g} · test #{ex.get('index')}")
    else:
        out.update(tokens=ex.get("tokens", []), note=f"test #{ex.get('index')}")
    return out


#: What a tower's examples are, as the page names them.
_INPUTS = {"vision": "images", "text": "captions",
           "audio": "clips (drawn as the log-mel spectrogram the audio tower reads: time frames down, mel "
                    "bands across from low to high, one grey scale for every clip)"}


def _extremes(entry: Mapping, tower: str, family: str, prefix: str, files: Files) -> list[str]:
    site, hsite = entry.get("site", "?"), entry.get("heat_site", "?")
    gridded = "grid" in entry
    parts = [f"<h3>Top- and bottom-scoring test examples (eq 6)</h3><p>Per value of {esc(family)}: the test "
             f"{_INPUTS.get(tower, 'inputs')} whose token-mean representation at "
             f"<code>{esc(site)}</code> projects highest and lowest onto the value's eq 6 direction (the score "
             f"under each); the colours are each {'patch token' if gridded else 'token'}'s projection onto the "
             f"value's direction at <code>{esc(hsite)}</code> (red positive, blue negative, paler nearer 0; "
             "hover for the value" + ("; the CLS token's is in the note" if gridded else "") + ").</p>"]
    for value, sides in entry.get("values", {}).items():
        for side, word in (("top", "highest"), ("bottom", "lowest")):
            examples = [_extreme(ex, prefix) for ex in sides.get(side, [])]
            if examples:
                parts.append(gallery(examples, files, f"{value}: {word}"))
    return parts


def _steered(entry: Mapping, site: str, family: str, prefix: str, files: Files, alpha, n) -> list[str]:
    parts = [f"<h3>Steering before and after (eq 5)</h3><p>Each value's eq 6 direction added to every "
             f"token at <code>{esc(site)}</code> (Table 3's site), alpha {alpha} x the "
             f"site's mean norm, on Table 3's {n} test inputs: the share of inputs of other values whose "
             f"zero-shot {esc(family)} label is the value after and before the edit, and inputs whose "
             "label changed to it, labelled before &rarr; after.</p>"]
    for value, r in entry.items():
        examples = []
        for ex in r.get("examples", []):
            item = {"label": f"{ex['before']} → {ex['after']}", "note": f"true {ex['truth']} · test #{ex['index']}"}
            if "image" in ex:
                item["image"] = prefix + str(ex["image"])
            else:
                item["tokens"] = ex.get("tokens", [])
            examples.append(item)
        title = (f"toward {value}: {_pct(r.get('success'))} of other-value inputs labelled {value} after "
                 f"({_pct(r.get('unedited'))} before)")
        parts.append(gallery(examples, files, title) if examples else
                     f'<p class="ex-title">{esc(title)}</p><p class="missing">no input changed its label to '
                     f"{esc(value)}</p>")
    return parts


def _captions(entry: Mapping, family: str, prefix: str, files: Files, alpha) -> list[str]:
    rows = []
    for value, r in entry.get("families", {}).get(family, {}).items():
        for ex in r.get("examples", []):
            uri = files.data_uri(prefix + str(ex["image"]))
            img = (f'<img class="thumb" alt="test #{ex["index"]}" src="{uri}" width="48" height="48" '
                   'style="image-rendering: pixelated">' if uri else f'<span class="missing">{esc(ex["image"])} '
                   "is not in the workdir</span>")
            named = f"{_pct(r.get('unedited'))} &rarr; {_pct(r.get('success'))}"
            rows.append([esc(value), named, img, esc(ex["truth"]), esc(ex["before"]), esc(ex["after"])])
    if not rows:
        return []
    return [f"<h3>Captions before and after (eq 5, the captioner)</h3><p>The ToyWorld captioner's greedy "
            f"captions of test images, unedited and with the value's eq 6 direction (of the captioner's own "
            f"representations) added at <code>{esc(entry.get('site', '?'))}</code>, alpha {alpha} x its mean "
            "norm. Named: the share of other-value images whose caption names the value (and no other "
            "value of the family), before &rarr; after. Images whose caption moved to the value are "
            "shown, else the first ones.</p>",
            table(["toward", "named", "image", "true value", "caption before", "caption after"], rows)]


def tower_section(results: Mapping, tower: str, family: str, files: Files) -> str:
    """The gallery's part of one tower's section of a concept page (a notice when it did not run
    or does not show the tower)."""
    g = _gallery(results)
    if not g:
        return ('<p class="missing">No gallery in results.json for this run (the ToyWorld pipeline '
                "draws it on the main world): no top- and bottom-scoring examples or steering "
                "before/after here.</p>")
    prefix = results.get("plot_dir", "")
    parts: list[str] = []
    entry = g.get("towers", {}).get(tower, {}).get(family)
    if entry:
        parts += _extremes(entry, tower, family, prefix, files)
    steering = g.get("steering", {})
    steered = steering.get("towers", {}).get(tower, {})
    if steered.get("families", {}).get(family):
        parts += _steered(steered["families"][family], steered.get("site", "?"), family, prefix, files,
                          steering.get("alpha"), steering.get("num_inputs"))
    if tower == "vision" and isinstance(steering.get("captions"), Mapping):
        parts += _captions(steering["captions"], family, prefix, files, steering.get("alpha"))
    if not parts:
        why = g.get("not_shown", {}).get(tower, "the gallery does not cover this tower")
        parts.append(f'<p class="missing">No examples for the {esc(tower)} tower: {esc(why)}.</p>')
    return "".join(parts)
