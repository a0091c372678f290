"""The fault suite: cuts, stalls, kills and junk over every route a call can take."""
