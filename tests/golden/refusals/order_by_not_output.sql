SELECT term_months, COUNT(*) AS n FROM bank.loans GROUP BY term_months ORDER BY AVG(amount)
