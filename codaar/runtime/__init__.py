"""Plumbing that the library and the programs share: processes (`distributed`), seeds
(`seeding`), profiler ranges (`profiling`) and the step-decay schedule (`schedule`)."""
