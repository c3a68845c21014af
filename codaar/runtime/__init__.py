"""Plumbing that the library and the programs share: processes (`distributed`), seeds
(`seeding`), profiler ranges (`profiling`), the step-decay schedule (`schedule`), locks (`locks`),
lazy exports (`lazy`), and the programs' outputs: where they may write (`outputs`), outputs that
appear whole (`publish`), memory maps with their space reserved (`memmaps`), signals as an
exception (`interrupts`)."""
