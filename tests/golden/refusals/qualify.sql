SELECT term_months, COUNT(*) FROM bank.loans GROUP BY term_months QUALIFY COUNT(*) > 1
