package loop_test

// connections are the streams the ping benchmark runs over.
var connections = []connection{{"pipe", pipePair}}
