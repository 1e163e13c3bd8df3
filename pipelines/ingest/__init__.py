"""Landed files: the inbox, `mlops land`, Great Expectations on delivered files, arrival times."""
