"""The SAE feature pages of ``report.html`` (``#feature-{architecture}-{index}``): one per feature
that is some concept value's best, with what it detects, its top-activating test images with the
latent's activation per patch, its activation histogram, its decoder row's top words through the
text tower and its own steering effect (``results["features"]``, from
``experiments/toyworld/features.py`` and ``feature_cards``). The hard world's SAEs get pages of
their own (``#feature-hard-{architecture}-{index}``), with its shortcut check on the pages of the
features that best detect the shortcut's target values on its training images, where the target
follows the source (ToyWorld's default pair: shape follows colour)."""

from __future__ import annotations

import math
from collections.abc import Mapping

from mrepe_jax.report.html.examples import gallery
from mrepe_jax.report.html.pages import Files, concept_id, esc, feature_id, fmt, table


def _features(results: Mapping) -> Mapping | None:
    f = results.get("features")
    return f if isinstance(f, Mapping) and "architectures" in f else None


def worlds(results: Mapping) -> list[tuple[str, Mapping, str]]:
    """``[(world, its results["features"], its image prefix)]``: the main world's (world "") and,
    where the run has one, the hard world's ("hard", images under ``hard/``), each trained its own
    SAEs, so a feature index names a feature of one world only."""
    out = []
    if (f := _features(results)) is not None:
        out.append(("", f, results.get("plot_dir", "")))
    hard = results.get("hard")
    if isinstance(hard, Mapping) and (f := _features(hard)) is not None:
        out.append(("hard", f, "hard/" + hard.get("plot_dir", "")))
    return out


def world_label(world: str) -> str:
    """What a page name adds for ``world``: nothing for the main world."""
    return f" ({world} world)" if world else ""


def _cards(r: Mapping) -> dict[int, Mapping]:
    """``{feature index: its page data}`` of one architecture (the first entry of an index wins:
    under the ``:paper`` protocol the first seed's, whose images ``plot_dir`` points at)."""
    out: dict[int, Mapping] = {}
    for card in r.get("feature_pages") or []:
        out.setdefault(int(card["feature"]), card)
    return out


def files(results: Mapping) -> list[str]:
    """Workdir files (relative paths) the feature pages show: the top examples' images."""
    return list(dict.fromkeys(f"{prefix}{ex['image']}" for _, f, prefix in worlds(results)
                              for r in f["architectures"].values()
                              for card in _cards(r).values() for ex in card.get("top_examples", [])))


def histogram_svg(hist: Mapping, label: str) -> str:
    """Bars of ``hist`` (``feature_cards.histogram``: ``edges``, ``counts``), heights on a log
    scale (a sparse latent's zero bin would flatten every other bar), each bin's range and count on
    hover."""
    edges, counts = hist["edges"], hist["counts"]
    if len(edges) != len(counts) + 1 or not counts:
        raise ValueError(f"a histogram needs len(edges) == len(counts) + 1 > 1, got {len(edges)} and {len(counts)}")
    w, h, left, top, bottom = 400, 120, 44, 8, 34
    top_count = max(max(counts), 1)
    bw = w / len(counts)
    out = [f'<svg class="chart hist" viewBox="0 0 {left + w + 10} {top + h + bottom}" width="{left + w + 10}" '
           f'height="{top + h + bottom}" role="img" aria-label="{esc(label)}">',
           f'<line class="grid" x1="{left}" x2="{left + w}" y1="{top + h}" y2="{top + h}" style="stroke:#999"/>']
    for k, c in enumerate(counts):
        bar = h * math.log1p(c) / math.log1p(top_count)
        tip = f"{label}: [{edges[k]:.4g}, {edges[k + 1]:.4g}{']' if k == len(counts) - 1 else ')'}: {c} images"
        # The whole column takes the hover, so an empty or short bin still shows its count.
        out.append(f'<g class="point" data-tip="{esc(tip)}"><title>{esc(tip)}</title>'
                   f'<rect x="{left + k * bw:.1f}" y="{top}" width="{bw:.1f}" height="{h}" fill="transparent"/>'
                   f'<rect x="{left + k * bw + 0.5:.1f}" y="{top + h - bar:.1f}" width="{max(bw - 1, 0.5):.1f}" '
                   f'height="{bar:.1f}" fill="#0072B2"/></g>')
    for k in (0, len(counts) // 2, len(counts)):
        out.append(f'<text class="tick" x="{left + k * bw:.1f}" y="{top + h + 13}" text-anchor="middle">'
                   f"{edges[k]:.3g}</text>")
    out.append(f'<text class="tick" x="{left - 4}" y="{top + 9}" text-anchor="end">{top_count}</text>')
    out.append(f'<text class="tick" x="{left - 4}" y="{top + h}" text-anchor="end">0</text>')
    out.append(f'<text class="axis" x="{left + w / 2}" y="{top + h + 30}" text-anchor="middle">'
               "activation (image: mean over its tokens)</text></svg>")
    return "".join(out)


def _examples(card: Mapping, detected: list[str], files: Files, prefix: str) -> str:
    """The top images, each labelled by its values of the ``detected`` families (the rest in its note)."""
    items = []
    for ex in card.get("top_examples", []):
        labels = ex.get("labels", {})
        items.append({
            "image": f"{prefix}{ex['image']}", "heat": ex.get("heat"), "score": ex.get("activation"),
            "label": " ".join(str(labels.get(f, "?")) for f in detected) or f"test {ex.get('index')}",
            "note": f"test #{ex.get('index')}, CLS {ex.get('cls', 0):.3g}; "
                    + " ".join(str(v) for f, v in labels.items() if f not in detected)})
    return gallery(items, files)


def _words(words: Mapping, settings: Mapping) -> str:
    top, bottom = words.get("top", []), words.get("bottom", [])
    rows = [[esc(t[0]) if t else "", fmt(t[1]) if t else "", esc(b[0]) if b else "", fmt(b[1]) if b else ""]
            for t, b in zip(top + [None] * (len(bottom) - len(top)), bottom + [None] * (len(top) - len(bottom)))]
    return (f"<p>The decoder row added at the site (eq 5: its unit vector times alpha = "
            f"{esc(settings.get('alpha', '?'))} times the site's mean norm, as Table 3 steers) moves each "
            "test image's unit-norm embedding; the mean move over the test images, against the text "
            f"tower's unit-norm embedding of <code>{esc(settings.get('prompt', '{}'))}</code> for each "
            "word of ToyWorld's caption vocabulary (cosine; norm of the mean move "
            f"{fmt(words.get('shift_norm'))}):</p>"
            + table(["top word", "cosine", "bottom word", "cosine"], rows))


def _steering(steer: Mapping, arch: str, detects: list) -> str:
    if steer.get("architecture") != arch:
        return ("<p>Steered in Table 3: only the first architecture's features "
                f"({esc(steer.get('architecture', '-'))}).</p>")
    per_value = steer.get("per_value")
    parts = []
    if per_value:
        rows = []
        for fam, val, _ in detects:
            own = per_value.get(fam, {}).get(val)
            if own is None:
                continue
            for a in own["add"]["success"]:
                rows.append([esc(f"{fam} = {val}"), f"add decoder row, alpha = {esc(a)}",
                             fmt(own["add"]["success"][a]), fmt(own["add"]["collateral"][a])])
            rows.append([esc(f"{fam} = {val}"), "clamp latent", fmt(own["clamp"]["success"]),
                         fmt(own["clamp"]["collateral"])])
        parts += ["<h2>Steering with this feature</h2>",
                  "<p>Held-out test images steered toward each value this feature detects: its decoder row "
                  "added at the site (eq 5, alpha in units of the site's mean norm), and the latent clamped on "
                  "every token. Success: the share of images not of that value whose zero-shot prediction "
                  "moves to it; collateral: the accuracy left on the other families (Table 3).</p>",
                  table(["target", "intervention", "success", "collateral"], rows)]
    add = steer["add"]
    parts.append("<h3>This SAE, mean over all recovered features</h3>" + table(
        ["intervention", "success", "collateral"],
        [[f"add decoder row, alpha = {esc(a)}", fmt(add['success'][a][0]), fmt(add['collateral'][a][0])]
         for a in add["success"]]
        + [["clamp latent", fmt(steer["clamp"]["success"]), fmt(steer["clamp"]["collateral"])]]))
    return "".join(parts)


def _shortcut(entries: list, spurious: Mapping) -> str:
    """The hard world's shortcut check for a feature that is some target value's best on the
    training images, where the target follows the source (``features._spurious``)."""
    source, target = spurious.get("source", "?"), spurious.get("target", "?")
    rows = [[esc(f"{target} = {value}"), esc(", ".join(e.get("sources", []))), fmt(e.get("test_auroc_target")),
             fmt(e.get("test_auroc_source")),
             f"the {esc(source)} (shortcut)" if (e.get("test_auroc_source") or 0) > (e.get("test_auroc_target") or 0)
             else f"the {esc(target)}"] for value, e in entries]
    return ("<h2>Shortcut check</h2>"
            f"<p>In this world's training images {esc(target)} follows {esc(source)}; in its test images the two "
            f"are independent. This is the feature whose activation best detects the {esc(target)} below on the "
            f"training images. On the test images, the AUROC of its activation for that {esc(target)} and for the "
            f"{esc(source)}s that came with it in training: whichever is higher is what the feature reads.</p>"
            + table(["best train feature for", f"training {esc(source)}s", f"test AUROC: {esc(target)}",
                     f"test AUROC: {esc(source)}", "reads"], rows))


def _page(world: str, arch: str, index: int, f: Mapping, r: Mapping, prefix: str, detects: list,
          shortcut: list, files: Files | None) -> str:
    fid, label = feature_id(arch, index, world), world_label(world)
    directions = f.get("directions", {}).get("per_value", {})
    settings = f.get("feature_pages", {})
    rows = [[f'<a href="#{concept_id(fam)}">{esc(fam)}</a>', esc(val), fmt(b.get("auroc")),
             fmt(b.get("probe_auroc")), fmt(directions.get(f"{fam}={val}"))] for fam, val, b in detects]
    card = _cards(r).get(index)
    spurious = r.get("spurious") or {}
    families = list(dict.fromkeys([fam for fam, _, _ in detects] if detects else
                                  [spurious.get("target"), spurious.get("source")] if shortcut else []))
    body, missing = [], []
    if shortcut:
        body.append(_shortcut(shortcut, spurious))
    if card and card.get("top_examples") and files is not None:
        body += ["<h2>Top-activating test images</h2>",
                 "<p>The test images where the latent's activation (mean over the image's tokens) is "
                 "highest, highest first; over each, the activation on each patch token (hover a cell "
                 "for its value; the CLS token's is in the note).</p>",
                 _examples(card, families, files, prefix)]
    else:
        missing.append("top-activating examples with patch heatmaps")
    if card and card.get("histogram"):
        hist = card["histogram"]
        body += ["<h2>Activation histogram</h2>",
                 f"<p>The activation of every test image ({hist.get('n', sum(hist['counts']))}; "
                 f"{hist.get('zeros', '?')} of them exactly 0), in equal bins; bar heights on a log "
                 "scale, counts on hover.</p>",
                 histogram_svg(hist, f"{arch} #{index}{label}")]
    else:
        missing.append("the activation histogram")
    if card and card.get("words"):
        body += ["<h2>Decoder direction through the text tower</h2>", _words(card["words"], settings)]
    else:
        missing.append("the decoder direction's top words through the text tower")
    note = ('<p class="missing">Not in results.json: ' + "; ".join(missing) + ".</p>") if missing else ""
    detected = ("The concept values this feature detects best (test AUROC of its activation; the eq 6 "
                "direction's beside it):</p>"
                + table(["family", "value", "feature AUROC", "probe AUROC", "eq 6 direction AUROC"], rows) if rows
                else "It is no concept value's best feature on the validation images; its page is for the "
                "shortcut check.</p>")
    steering = _steering(f.get("steering", {}), arch, detects) if f.get("steering") and detects else ""
    return "".join([
        f'<section class="page" id="{fid}">',
        '<p><a href="#top">&larr; back to the report</a> · <a href="#features">all features</a></p>',
        f"<h1>SAE feature {esc(arch)} #{index}{esc(label)}</h1>",
        f"<p>{esc(arch)} SAE of {esc(f.get('latents', '?'))} latents at <code>{esc(f.get('site', '?'))}"
        f"</code>{f' in the {esc(world)} world' if world else ''}, L0 {fmt(r.get('l0'), 2)}, "
        f"FVU {fmt(r.get('fvu'))}. ", detected, *body, steering, note, "</section>"])


def _roles(r: Mapping) -> tuple[dict[int, list], dict[int, list]]:
    """One architecture's features by role: ``{index: [(family, value, best)]}`` for those that
    are some value's best, ``{index: [(target value, entry)]}`` for the shortcut check's."""
    detects: dict[int, list] = {}
    for family, values in r.get("per_value", {}).items():
        for value, best in values.items():
            detects.setdefault(int(best["feature"]), []).append((family, value, best))
    shortcut: dict[int, list] = {}
    for value, entry in ((r.get("spurious") or {}).get("per_value") or {}).items():
        shortcut.setdefault(int(entry["feature"]), []).append((value, entry))
    return detects, shortcut


def _paged(results: Mapping):
    """``(world, features, prefix, arch, its results, index, detects, shortcut)`` for every feature
    that gets a page, in page order: per world, per architecture, by index."""
    for world, f, prefix in worlds(results):
        for arch, r in f["architectures"].items():
            detects, shortcut = _roles(r)
            for index in sorted(set(detects) | set(shortcut)):
                yield world, f, prefix, arch, r, index, detects.get(index, []), shortcut.get(index, [])


def feature_pages(results: Mapping, files: Files | None = None) -> list[tuple[str, str, str]]:
    """``[(id, name, page markup)]``: one page per SAE feature that is some concept value's best
    feature, and in the hard world also per feature of its shortcut check, in each world."""
    return [(feature_id(arch, index, world), f"{arch} #{index}{world_label(world)}",
             _page(world, arch, index, f, r, prefix, detects, shortcut, files))
            for world, f, prefix, arch, r, index, detects, shortcut in _paged(results)]


def index_markup(results: Mapping) -> str:
    """The feature pages' index ("" without pages): a line per architecture and world, its
    features' links in page order, each link's hover saying what the feature is for (e.g.
    "colour = red; shape = circle (shortcut check)")."""
    groups: dict[str, list[str]] = {}
    for world, _, _, arch, r, index, detects, shortcut in _paged(results):
        target = (r.get("spurious") or {}).get("target", "?")
        title = "; ".join([f"{fam} = {val}" for fam, val, _ in detects]
                          + [f"{target} = {val} (shortcut check)" for val, _ in shortcut])
        groups.setdefault(f"{arch}{world_label(world)}", []).append(
            f'<a href="#{feature_id(arch, index, world)}" title="{esc(title)}">#{index}</a>')
    if not groups:
        return ""
    return '<ul class="feature-index">' + "".join(
        f"<li>{esc(group)}: {' · '.join(links)}</li>" for group, links in groups.items()) + "</ul>"
