"""Course tooling for the nbgrader assignments in ``notebooks/assignments/``: not the reading path.

``python -m proxnp.assignments scan SUBMISSIONS_DIR`` lists the submitted answers that need a look
(:mod:`proxnp.assignments.scan`, no course files needed); ``list`` and ``try`` drive nbgrader on the
source notebooks of a checkout (:mod:`proxnp.assignments.course`); ``feedback-zip`` packs feedback for a
learning platform; :mod:`proxnp.assignments.nbgrader_plugins` holds a preprocessor for
``nbgrader_config.py``.
"""
