"""The locked and graded cells of the course's four assignments, as released: {notebook name: {grade_id:
fingerprint of the released source}} (:func:`proxnp.assignments.scan.fingerprint`).  The scan skips a submitted cell
only when its grade_id and source match an entry here.  The test suite checks the table against
``notebooks/assignments/``; after a change to a locked or test cell there, write it anew with::

    python -c "from proxnp.assignments.scan import released_cells; print(released_cells('notebooks/assignments'))"
"""

LOCKED = {
    "01_layers_by_hand": {
        "setup": "b9ec0087f7e6bd90",
        "affine_test": "f953333ed9cc3bc1",
        "relu_test": "ce3a2a687af2ebb3",
        "im2col_test": "6d2b69dc2f5269c0",
        "conv_forward_test": "7c6012d9789f8ede",
        "conv_backward_test": "3af5eea785ac3db7",
        "softmax_test": "3208e298da76e19a",
    },
    "02_backprop_as_penalty_steps": {
        "setup": "07fe0310df139a36",
        "energy_test": "8402ef6725960ca1",
        "algorithm1_test": "711327beb5876874",
        "theta_step_test": "4ab7b5fd9540d407",
    },
    "03_the_proximal_step": {
        "setup": "52537ff69dc37148",
        "exact_test": "e126dde4cdd20077",
        "cg_test": "c217027b5ad71ea1",
        "descent_test": "ea45dde3c051a54a",
        "step_test": "2c60da5a7534b97e",
    },
    "04_the_prox_step_of_a_convolution": {
        "setup": "aa1f3ad473f88598",
        "design_test": "b3db121f980308c5",
        "exact_test": "90423ff694e2728e",
        "matfree_test": "b3846fa6051becd9",
        "step_test": "52b515244fe5a54b",
    },
}
