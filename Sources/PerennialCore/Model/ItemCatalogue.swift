// Item texts and attributes sent with UPSERT_ITEM. Owned by the thread that
// admits requests.

public struct ItemRecord: Sendable, Equatable {
    public var text: String
    public var attributes: [(String, String)]

    public init(text: String, attributes: [(String, String)]) {
        self.text = text
        self.attributes = attributes
    }

    public static func == (a: ItemRecord, b: ItemRecord) -> Bool {
        a.text == b.text && a.attributes.elementsEqual(b.attributes, by: { $0 == $1 })
    }
}

public final class ItemCatalogue {
    private var records: [Int32: ItemRecord] = [:]
    public private(set) var textBytes = 0

    public init() {}

    public var count: Int { records.count }

    /// Stores the record; true when the item had none before.
    @discardableResult
    public func upsert(_ item: Int32, _ record: ItemRecord) -> Bool {
        let old = records.updateValue(record, forKey: item)
        textBytes += record.text.utf8.count - (old?.text.utf8.count ?? 0)
        return old == nil
    }

    /// Forgets an item's record (its id expired).
    public func remove(_ item: Int32) {
        if let old = records.removeValue(forKey: item) { textBytes -= old.text.utf8.count }
    }

    public func record(of item: Int32) -> ItemRecord? { records[item] }

    /// Every stored record, in item order.
    public func forEach(_ body: (Int32, ItemRecord) -> Void) {
        for item in records.keys.sorted() { body(item, records[item]!) }
    }
}
