"""The science of Butler Pipelines: the image model, instruments and the pipeline tasks that run on them.

Subpackages: `tasks.image` (Exposure, masks, PSFs, backgrounds, kernels, camera geometry, skymaps),
`tasks.instruments` (cameras, raw ingest, visit definition).  Task modules (``tasks.isr``...) hold one
`graph.PipelineTask` each.
"""
