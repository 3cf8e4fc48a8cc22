"""Tracker backends selected by `trainer.logger`; each is imported only when a run asks for it."""
