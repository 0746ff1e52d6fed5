"""Every rendering of the project's results, shared by the CLI, the HTML reports and the service.

- ``automl.report.text``: the terminal's tables (re-exported here: ``from automl.report import run_text``).
- ``automl.report.pages``: one self-contained HTML page per run and per comparison (``automl report``;
  ``fit`` and ``compare`` write ``report.html`` into the run or comparison folder).
- ``automl.report.figures``: the pages' plots (matplotlib, imported only when a page is rendered, so
  ``import automl`` and ``automl --help`` stay fast).
- ``automl.report.evidence``: what a page reads: the run folder, the study's trials, the dataset's
  images, and bootstrap intervals over the test images.
"""

from automl.report.text import (RUNS_METRICS, augmenters_text, comparison_text, dataset_notes, dataset_summary,
                                dataset_text, embed_table, fit_text, leak_note, predict_table, pretrain_text,
                                recipe_problems_text, recipe_text, run_text, runs_table, side_by_side,
                                skipped_files_text, store_check_text, table)

__all__ = ["RUNS_METRICS", "augmenters_text", "comparison_text", "dataset_notes", "dataset_summary", "dataset_text",
           "embed_table", "fit_text", "leak_note", "predict_table", "pretrain_text", "recipe_problems_text",
           "recipe_text", "run_text", "runs_table", "side_by_side", "skipped_files_text", "store_check_text", "table"]
