fn main() {
    println!("relay");
}
