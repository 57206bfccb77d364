"""Cohort statistics (the paper's Figure 4 and Suppl. Table 8).

``cohort``: load and validate the cohort table; ``figure4``: models and tables; ``plots``: the
figures; ``report``: every output file and the HTML report; ``synthetic``: planted cohorts.
"""
