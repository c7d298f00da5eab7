SELECT term_months, COUNT(*) FROM bank.loans GROUP BY term_months LIMIT 2.5
