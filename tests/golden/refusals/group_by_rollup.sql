SELECT term_months, SUM(amount) FROM bank.loans GROUP BY ROLLUP (term_months)
