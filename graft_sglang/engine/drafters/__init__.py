"""Drafters for the offline engine, behind one small interface (``base.Drafter``)."""
