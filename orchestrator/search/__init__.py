"""The parts of :class:`orchestrator.searcher.TargetSearcher`, one job each (its docstring
states the design): which target a trial is for (:mod:`.policy`), which other targets a
finished trial is shared with (:mod:`.sharing`), the Optuna studies and samplers behind the
targets (:mod:`.studies`, chosen by ``--search``), the log a checkpoint holds and replays
(:mod:`.replay`) and the optional Optuna storage record (:mod:`.record`); :mod:`.outcomes`
holds what they share: how a finished trial's result is classified and logged."""
