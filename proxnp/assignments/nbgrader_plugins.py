"""nbgrader plugins for the course: configured in ``nbgrader_config.py``, never imported by proxnp itself.

``DropUnknownCells`` makes a submission whose student renamed a graded cell (edited its ``grade_id``)
gradable: nbgrader's ``OverwriteCells`` stops the whole autograde with a ``KeyError`` on a cell id the
gradebook does not know.  Run before it, this preprocessor turns such a cell into an ordinary cell of
the student's (its nbgrader metadata removed, a warning logged), so that ``add_missing_cells`` puts the
real test cell back and the question is graded as if the cell had been deleted::

    c.Autograde.sanitize_preprocessors = [
        "nbgrader.preprocessors.ClearOutput",
        "nbgrader.preprocessors.DeduplicateIds",
        "nbgrader.preprocessors.OverwriteKernelspec",
        "proxnp.assignments.nbgrader_plugins.DropUnknownCells",
        "nbgrader.preprocessors.OverwriteCells",
        "nbgrader.preprocessors.CheckCellMetadata",
    ]
"""

from nbgrader.api import Gradebook
from nbgrader.preprocessors import NbGraderPreprocessor


class DropUnknownCells(NbGraderPreprocessor):
    """Remove the nbgrader metadata of every cell whose grade_id the gradebook does not know."""

    def preprocess(self, nb, resources):
        notebook = resources["nbgrader"]["notebook"]
        assignment = resources["nbgrader"]["assignment"]
        with Gradebook(resources["nbgrader"]["db_url"]) as gb:
            known = {c.name for c in gb.find_notebook(notebook, assignment).source_cells}
        for cell in nb.cells:
            meta = cell.metadata.get("nbgrader")
            if meta and meta.get("grade_id") not in known:
                self.log.warning(
                    "%s: cell %r is not in the gradebook (renamed?); it is graded as the student's own cell",
                    notebook,
                    meta.get("grade_id"),
                )
                del cell.metadata["nbgrader"]
        return nb, resources
