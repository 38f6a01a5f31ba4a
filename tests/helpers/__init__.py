"""Helpers shared by the test modules (test modules never import each other): running the
``mmtrain`` command (:mod:`helpers.cli`), writing data sets in their real on-disk layouts
(:mod:`helpers.formats`), the bad-input harness (:mod:`helpers.cases`) and the exact-resume
runs (:mod:`helpers.resume`)."""
