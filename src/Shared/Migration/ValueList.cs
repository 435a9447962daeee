using System.Collections;
using System.Collections.Immutable;
using System.Runtime.CompilerServices;

namespace LiveMigration.Shared.Migration;

/// <summary>
/// An immutable list that compares by its items, so records holding lists keep value equality
/// (a recovered saga state must equal the state it was before the crash).
/// </summary>
[CollectionBuilder(typeof(ValueList), nameof(ValueList.Create))]
public sealed class ValueList<T> : IReadOnlyList<T>, IEquatable<ValueList<T>>
{
    public static readonly ValueList<T> Empty = new(ImmutableArray<T>.Empty);
    private readonly ImmutableArray<T> _items;

    public ValueList(ImmutableArray<T> items) => _items = items.IsDefault ? ImmutableArray<T>.Empty : items;
    public ValueList(IEnumerable<T> items) : this(items.ToImmutableArray()) { }

    public int Count => _items.Length;
    public T this[int index] => _items[index];
    public ValueList<T> Add(T item) => new(_items.Add(item));
    public ValueList<T> SetItem(int index, T item) => new(_items.SetItem(index, item));

    public bool Equals(ValueList<T>? other) =>
        other is not null && (ReferenceEquals(this, other) || _items.SequenceEqual(other._items));
    public override bool Equals(object? obj) => obj is ValueList<T> other && Equals(other);
    public override int GetHashCode()
    {
        var hash = new HashCode();
        foreach (var item in _items) hash.Add(item);
        return hash.ToHashCode();
    }
    public override string ToString() => $"[{string.Join(", ", _items)}]";

    public IEnumerator<T> GetEnumerator() => ((IEnumerable<T>)_items).GetEnumerator();
    IEnumerator IEnumerable.GetEnumerator() => GetEnumerator();
}

public static class ValueList
{
    public static ValueList<T> Create<T>(ReadOnlySpan<T> items) => new(items.ToImmutableArray());
    public static ValueList<T> ToValueList<T>(this IEnumerable<T> items) => new(items);
}
