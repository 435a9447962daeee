using System.Diagnostics.CodeAnalysis;

namespace LiveMigration.Shared.Model;

/// <summary>
/// Parses the UUIDs every id of the pool is made of. Only the canonical 36-character form is
/// accepted, so an id can never carry a path separator, "..", or anything else into a file path.
/// </summary>
public static class UuidText
{
    public static bool TryParse(string? text, out Guid value)
    {
        value = Guid.Empty;
        return text is { Length: 36 } && Guid.TryParseExact(text, "D", out value);
    }

    public static Guid Parse(string? text, string what) =>
        TryParse(text, out var value)
            ? value
            : throw new OperationFailedException(ErrorCodes.InvalidId,
                $"{what} must be a UUID like 2f1c6e2a-6a3e-4c43-9a53-0f6f0c7d9b11, got '{Truncate(text)}'");

    private static string Truncate(string? text) =>
        text is null ? "(null)" : text.Length > 80 ? text[..80] + "…" : text;
}

/// <summary>A storage domain's id.</summary>
public readonly record struct DomainId(Guid Value)
{
    public static DomainId New() => new(Guid.NewGuid());
    public static DomainId Parse(string? text) => new(UuidText.Parse(text, "storage domain id"));
    public static bool TryParse(string? text, [NotNullWhen(true)] out DomainId? id)
    {
        id = UuidText.TryParse(text, out var g) ? new DomainId(g) : null;
        return id is not null;
    }
    public override string ToString() => Value.ToString("D");
}

/// <summary>An image's id: one VM disk, the same on every domain that holds a copy of it.</summary>
public readonly record struct ImageId(Guid Value)
{
    public static ImageId New() => new(Guid.NewGuid());
    public static ImageId Parse(string? text) => new(UuidText.Parse(text, "image id"));
    public override string ToString() => Value.ToString("D");
}

/// <summary>A volume's id: one layer of an image's chain, the same on every domain that holds a copy.</summary>
public readonly record struct VolumeId(Guid Value)
{
    /// <summary>The parent id a base volume carries in its metadata (VDSM's blank UUID).</summary>
    public static readonly VolumeId Blank = new(Guid.Empty);
    public bool IsBlank => Value == Guid.Empty;
    public static VolumeId New() => new(Guid.NewGuid());
    public static VolumeId Parse(string? text) => new(UuidText.Parse(text, "volume id"));
    public override string ToString() => Value.ToString("D");
}

/// <summary>A virtual machine's id.</summary>
public readonly record struct VmId(Guid Value)
{
    public static VmId New() => new(Guid.NewGuid());
    public static VmId Parse(string? text) => new(UuidText.Parse(text, "VM id"));
    public override string ToString() => Value.ToString("D");
}

/// <summary>Where a volume lives: a chain may cross domains, so a parent is named by both.</summary>
public readonly record struct VolumeRef(DomainId Domain, VolumeId Volume)
{
    public override string ToString() => $"{Domain}/{Volume}";
}

/// <summary>A migration's id: the saga entity's id, and the first part of every operation id it sends.</summary>
public readonly record struct MigrationId(Guid Value)
{
    public static MigrationId New() => new(Guid.NewGuid());
    public static MigrationId Parse(string? text) => new(UuidText.Parse(text, "migration id"));
    public static bool TryParse(string? text, [NotNullWhen(true)] out MigrationId? id)
    {
        id = UuidText.TryParse(text, out var g) ? new MigrationId(g) : null;
        return id is not null;
    }
    public override string ToString() => Value.ToString("D");
}
