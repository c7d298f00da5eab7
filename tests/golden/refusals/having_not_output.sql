SELECT COUNT(*) FROM bank.loans GROUP BY term_months HAVING term_months > 12
