SELECT term_months, COUNT(*) FROM bank.loans GROUP BY term_months HAVING SUM(amount) > 10
