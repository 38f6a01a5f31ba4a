"""Helpers shared by the test modules (test modules never import each other): running the
``mmtrain`` command (:mod:`helpers.cli`), the bad-input harness (:mod:`helpers.cases`), the
exact-resume runs (:mod:`helpers.resume`), data sets written in their real on-disk layouts
(:mod:`helpers.coco`, :mod:`helpers.manifest`, :mod:`helpers.speech`, :mod:`helpers.vqa`,
:mod:`helpers.multi`) and model-part helpers (:mod:`helpers.modules`)."""
