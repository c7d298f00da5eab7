SELECT term_months, COUNT(*) FROM bank.loans GROUP BY 3
