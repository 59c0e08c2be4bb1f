"""The RunPod serverless worker: Z-Image-Turbo behind a strict, small handler.

Modules: ``settings`` (environment), ``request`` (input validation), ``errors``
(the error contract with the dispatcher), ``pipeline`` (loading and generating),
``handler`` (RunPod job in, image out), ``adapters`` (character LoRA adapters: the file
cache and the loaded few), ``encoding`` and ``upload`` (the image out), ``tiny`` (an offline
test pipeline and adapters).
"""
