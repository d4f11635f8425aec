"""The reference pipeline's own stage code: prepare -> train -> (onnxport export) -> evaluate.

Each stage is a module run by ``dvc.yaml`` as ``python -m pipelines.<stage>``. The work lives in a
plain function taking the composed config (tested on its own); ``main()`` only composes ``conf/``.
"""
