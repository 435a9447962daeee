using System.Globalization;
using LiveMigration.Shared.Model;

namespace LiveMigration.HostNode.Storage.File;

/// <summary>
/// A volume's <c>&lt;volumeId&gt;.meta</c> (DESIGN §4): DOMAIN IMAGE PUUID PDOMAIN VOLTYPE FORMAT
/// LEGALITY CAPACITY GEN CTIME TYPE, then OWNER OWNERGEN for a volume a migration made (DESIGN §7 invariant 3:
/// the migration id and the generation it ran under). A base volume has the blank PUUID; PDOMAIN is always
/// written and equals DOMAIN unless the parent is on another domain. TYPE is VDSM's word for the allocation,
/// SPARSE or PREALLOCATED. Files written before OWNER existed read as volumes without an owner, files written
/// before TYPE existed as SPARSE (every volume was).
/// </summary>
internal sealed record VolumeMetadata(
    DomainId Domain,
    ImageId Image,
    VolumeRef? Parent,
    VolumeType Type,
    VolumeFormat Format,
    Legality Legality,
    long Capacity,
    int Generation,
    long CreatedUnixSeconds,
    VolumeOwner? Owner = null,
    VolumeAllocation Allocation = VolumeAllocation.Sparse)
{
    public IEnumerable<KeyValuePair<string, string>> ToKeyValues() => Owner is null
        ? Common()
        :
        [
            .. Common(),
            new("OWNER", Owner.Migration.ToString()),
            new("OWNERGEN", Owner.Generation.ToString(CultureInfo.InvariantCulture)),
        ];

    private IEnumerable<KeyValuePair<string, string>> Common() =>
    [
        new("DOMAIN", Domain.ToString()),
        new("IMAGE", Image.ToString()),
        new("PUUID", (Parent?.Volume ?? VolumeId.Blank).ToString()),
        new("PDOMAIN", (Parent?.Domain ?? Domain).ToString()),
        new("VOLTYPE", Type == VolumeType.Leaf ? "LEAF" : "INTERNAL"),
        new("FORMAT", Format == VolumeFormat.Cow ? "COW" : "RAW"),
        new("LEGALITY", Legality == Legality.Legal ? "LEGAL" : "ILLEGAL"),
        new("CAPACITY", Capacity.ToString(CultureInfo.InvariantCulture)),
        new("GEN", Generation.ToString(CultureInfo.InvariantCulture)),
        new("CTIME", CreatedUnixSeconds.ToString(CultureInfo.InvariantCulture)),
        new("TYPE", Allocation == VolumeAllocation.Preallocated ? "PREALLOCATED" : "SPARSE"),
    ];

    /// <summary>Parses strictly: every key present, every id a UUID, every enum one of its words.</summary>
    public static VolumeMetadata Parse(IReadOnlyDictionary<string, string> values, string path)
    {
        string Get(string key) => values.TryGetValue(key, out var v)
            ? v
            : throw Corrupt(path, $"key {key} is missing");
        T OneOf<T>(string key, params (string Word, T Value)[] words)
        {
            var text = Get(key);
            foreach (var (word, value) in words)
                if (text == word) return value;
            throw Corrupt(path, $"{key}={text} is not one of {string.Join('|', words.Select(w => w.Word))}");
        }
        long Number(string key, long min) =>
            long.TryParse(Get(key), NumberStyles.None, CultureInfo.InvariantCulture, out var n) && n >= min
                ? n
                : throw Corrupt(path, $"{key}={Get(key)} is not a number >= {min}");

        var domain = DomainId.Parse(Get("DOMAIN"));
        var parentVolume = VolumeId.Parse(Get("PUUID"));
        var parentDomain = DomainId.Parse(Get("PDOMAIN"));
        var generation = Number("GEN", 0);
        VolumeOwner? owner = values.ContainsKey("OWNER")
            ? new VolumeOwner(MigrationId.Parse(Get("OWNER")), Number("OWNERGEN", 0))
            : values.ContainsKey("OWNERGEN") ? throw Corrupt(path, "OWNERGEN without OWNER") : null;
        return new VolumeMetadata(
            domain,
            ImageId.Parse(Get("IMAGE")),
            parentVolume.IsBlank ? null : new VolumeRef(parentDomain, parentVolume),
            OneOf("VOLTYPE", ("LEAF", VolumeType.Leaf), ("INTERNAL", VolumeType.Internal)),
            OneOf("FORMAT", ("COW", VolumeFormat.Cow), ("RAW", VolumeFormat.Raw)),
            OneOf("LEGALITY", ("LEGAL", Legality.Legal), ("ILLEGAL", Legality.Illegal)),
            Number("CAPACITY", 1),
            generation <= int.MaxValue ? (int)generation : throw Corrupt(path, $"GEN={generation} is too large"),
            Number("CTIME", 0),
            owner,
            values.ContainsKey("TYPE") ? OneOf("TYPE", ("SPARSE", VolumeAllocation.Sparse), ("PREALLOCATED", VolumeAllocation.Preallocated)) : VolumeAllocation.Sparse);
    }

    private static OperationFailedException Corrupt(string path, string why) =>
        new(ErrorCodes.IoError, $"volume metadata {path} is corrupt: {why}");
}

/// <summary>A domain's <c>dom_md/metadata</c>: NAME ID POOL KIND CAPACITY.</summary>
internal sealed record DomainMetadata(string Name, DomainId Id, string Pool, long CapacityBytes)
{
    public const string FileKind = "file";
    public const int MaxNameLength = 100;

    public IEnumerable<KeyValuePair<string, string>> ToKeyValues() =>
    [
        new("NAME", Name),
        new("ID", Id.ToString()),
        // A domain belongs to no pool until the pool layer attaches it; the key is kept so the format is stable.
        new("POOL", Pool),
        new("KIND", FileKind),
        new("CAPACITY", CapacityBytes.ToString(CultureInfo.InvariantCulture)),
    ];

    public static DomainMetadata Parse(IReadOnlyDictionary<string, string> values, string path)
    {
        string Get(string key) => values.TryGetValue(key, out var v)
            ? v
            : throw new OperationFailedException(ErrorCodes.IoError, $"domain metadata {path} is corrupt: key {key} is missing");
        if (Get("KIND") != FileKind)
            throw new OperationFailedException(ErrorCodes.IoError, $"domain metadata {path} has KIND={Get("KIND")}, expected {FileKind}");
        var pool = Get("POOL");
        if (pool.Length > 0) UuidText.Parse(pool, "pool id");
        if (!long.TryParse(Get("CAPACITY"), NumberStyles.None, CultureInfo.InvariantCulture, out var capacity) || capacity <= 0)
            throw new OperationFailedException(ErrorCodes.IoError, $"domain metadata {path} has CAPACITY={Get("CAPACITY")}, not a positive number");
        return new DomainMetadata(ValidateName(Get("NAME")), DomainId.Parse(Get("ID")), pool, capacity);
    }

    /// <summary>A name is shown to people and stored in a KEY=VALUE line: printable, one line, no '=' or '/'.</summary>
    public static string ValidateName(string? name)
    {
        string? problem = name switch
        {
            null or "" => "is empty",
            { Length: > MaxNameLength } => $"is longer than {MaxNameLength} characters",
            _ when name.Any(char.IsControl) => "contains a control character (newline, tab…)",
            _ when name.Contains('=') || name.Contains('/') => "contains '=' or '/'",
            _ when string.IsNullOrWhiteSpace(name) => "is only blanks",
            _ => null,
        };
        return problem is null
            ? name!
            : throw new OperationFailedException(ErrorCodes.InvalidId,
                $"storage domain name '{(name is null ? "(null)" : name.Length > 40 ? name[..40] + "…" : name)}' {problem}");
    }
}
