SELECT COUNT(*) FROM bank.customers c JOIN bank.loans l ON c.age = l.term_months
