"""The CAN chain's stages, one file and one entry function ``run(ctx)`` each (see ``pipeline.stages``)."""
