SELECT SUM(amount) OVER (PARTITION BY term_months) FROM bank.loans
