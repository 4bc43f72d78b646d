"""Telling people and systems that a job finished: signed webhooks and email, sent by the controller's outbox."""
