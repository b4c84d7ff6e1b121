"""``veilleuse bench``: the whole pipeline against the old stack's design, on the same load."""
