SELECT term_months, MAX(amount) FROM bank.loans GROUP BY term_months
