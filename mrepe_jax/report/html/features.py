"""The SAE feature pages of ``report.html`` (``#feature-{architecture}-{index}``): one per feature
that is some concept value's best, with what it detects and the SAE's steering."""

from __future__ import annotations

from collections.abc import Mapping

from mrepe_jax.report.html.pages import Files, concept_id, esc, feature_id, fmt, table


def files(results: Mapping) -> list[str]:
    """Workdir files (relative paths) the feature pages show."""
    return []


def feature_pages(results: Mapping, files: Files | None = None) -> list[tuple[str, str, str]]:
    """``[(id, name, page markup)]``: one page per SAE feature that is some concept value's best feature."""
    f = results.get("features")
    if not isinstance(f, Mapping) or "architectures" not in f:
        return []
    pages = []
    directions = f.get("directions", {}).get("per_value", {})
    for arch, r in f["architectures"].items():
        detects: dict[int, list] = {}
        for family, values in r.get("per_value", {}).items():
            for value, best in values.items():
                detects.setdefault(int(best["feature"]), []).append((family, value, best))
        for index in sorted(detects):
            fid = feature_id(arch, index)
            rows = [[f'<a href="#{concept_id(fam)}">{esc(fam)}</a>', esc(val), fmt(b.get("auroc")),
                     fmt(b.get("probe_auroc")), fmt(directions.get(f"{fam}={val}"))]
                    for fam, val, b in detects[index]]
            steer = f.get("steering", {})
            steering = ""
            if steer.get("architecture") == arch:
                add = steer["add"]
                steering = ("<h2>Steering (this SAE, all recovered features)</h2>" + table(
                    ["intervention", "success", "collateral"],
                    [[f"add decoder row, alpha = {esc(a)}", fmt(add['success'][a][0]), fmt(add['collateral'][a][0])]
                     for a in add["success"]]
                    + [["clamp latent", fmt(steer["clamp"]["success"]), fmt(steer["clamp"]["collateral"])]]))
            pages.append((fid, f"{arch} #{index}", "".join([
                f'<section class="page" id="{fid}">',
                '<p><a href="#top">&larr; back to the report</a> · <a href="#features">all features</a></p>',
                f"<h1>SAE feature {esc(arch)} #{index}</h1>",
                f"<p>{esc(arch)} SAE of {esc(f.get('latents', '?'))} latents at <code>{esc(f.get('site', '?'))}"
                f"</code>, L0 {fmt(r.get('l0'), 2)}, FVU {fmt(r.get('fvu'))}. The concept values this feature "
                "detects best (test AUROC of its activation; the eq 6 direction's beside it):</p>",
                table(["family", "value", "feature AUROC", "probe AUROC", "eq 6 direction AUROC"], rows),
                steering,
                '<p class="missing">Not yet here (not in results.json): top-activating examples with patch '
                "heatmaps, the activation histogram, and the decoder direction's top words through the "
                "text tower.</p></section>"])))
    return pages
