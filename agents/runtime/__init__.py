"""The runtime that feeds the agents: faust for group membership, partitions and changelogged
tables, and the batch path (``streaming``) that hands each agent its records a batch at a time."""
