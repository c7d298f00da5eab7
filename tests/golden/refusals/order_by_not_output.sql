SELECT COUNT(*) AS n FROM bank.loans GROUP BY term_months ORDER BY term_months
