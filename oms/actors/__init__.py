"""Actors: supervised pools of workers fed by bounded mailboxes, and the stages they run."""
