"""Humans and machine together: the export replayed in time order with retirement and a detector agent."""
