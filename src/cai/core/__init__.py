"""The core loop: input records, the pipeline of stages, the engine, run sessions."""
