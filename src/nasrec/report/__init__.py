"""`nasrec report RUN_DIR`: a Markdown page and a self-contained HTML page about one pipeline run.

Sections (each only when its data exists in the run directory): the data (rows, CTR, Bayes-optimal log
loss of synthetic data); the supernet's training curve; the search trajectory (best score so far
against candidates scored); the Pareto front of supernet score against MFLOPs, and the from-scratch
validation log loss against MFLOPs of the retrained candidates, the final model and the baselines (zoo
and published NASRecNets); the rank-correlation scatter of a `rankcheck/` folder; the final comparison
table (test log loss, AUC, MFLOPs, parameters, training samples/s; mean ± std over the seeds of
`final.seeds`, each model against the searched one by Welch's interval); the goal check against the
best baseline, over the seeds and over the test rows (`nasrec compare`'s tests); the final
architecture's diagram (an SVG from Graphviz when `dot` is installed, else a matplotlib drawing; the
Markdown also holds its Mermaid source) and text summary. Plots are matplotlib PNGs in `report/`,
embedded as data URIs in `report/report.html`, which loads nothing and works offline. Every plot says
which split it shows. The HTML is made from the Markdown by `_html` (`report.html`), which renders the inline markup
the report uses (bold, italics, code, links), so no Markdown marker reaches the page.
"""

import shutil  # noqa: F401 - tests replace report.shutil.which to choose the diagram's backend

from nasrec.report.diagram import _arch_figure, _diagram_backend, _graphviz_svg
from nasrec.report.figures import _outlier_cut, _pareto_figure
from nasrec.report.html import _inline
from nasrec.report.sources import _models
from nasrec.report.write import write_report

__all__ = [
    "_arch_figure",
    "_diagram_backend",
    "_graphviz_svg",
    "_inline",
    "_models",
    "_outlier_cut",
    "_pareto_figure",
    "write_report",
]
