"""Course tooling for the nbgrader assignments in ``notebooks/assignments/``: not the reading path.

``python -m proxnp.assignments try`` drives nbgrader on the course files of a checkout
(:mod:`proxnp.assignments.course`).
"""
