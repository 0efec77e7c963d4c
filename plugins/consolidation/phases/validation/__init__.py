"""Parts of the nightly validation (phases.nightly, phases.nightly_checks) that need a module of their own."""
