SELECT SUM(term_months) FROM bank.loans
