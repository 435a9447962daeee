using LiveMigration.Shared.Model;

namespace LiveMigration.HostNode.Storage;

/// <summary>
/// The folders under which this host may create or attach file storage domains (its configured domain roots and the
/// roots an operator allowed). A HostNode runs as root: without this, whoever reaches the API could have it make and
/// fill a folder anywhere. A path is judged by where it really leads: <c>..</c> is followed and every symlink of an
/// existing component is resolved, so neither climbs out of an allowed root.
/// </summary>
public sealed class StorageRootPolicy
{
    /// <summary>Symlinks followed in one path before it is refused (the kernel's ELOOP limit).</summary>
    private const int MaxSymlinks = 40;

    private readonly IReadOnlyList<string> _roots;

    public StorageRootPolicy(IEnumerable<string> roots)
    {
        _roots = roots.Select(r => Path.IsPathFullyQualified(r)
                ? r
                : throw new ArgumentException($"an allowed storage root must be an absolute path, got '{r}'"))
            .Distinct().ToList();
    }

    /// <summary>Allows nothing: a host without configured roots creates and attaches no file domain.</summary>
    public static StorageRootPolicy None { get; } = new([]);

    /// <summary>The roots as configured (each is resolved again at every check, as its symlinks may change).</summary>
    public IReadOnlyList<string> Roots => _roots;

    /// <summary>
    /// The real path <paramref name="path"/> leads to, when it lies in (or is) an allowed root; otherwise
    /// <see cref="ErrorCodes.PathNotAllowed"/>. Callers create and record the returned path, not the one they were given.
    /// </summary>
    public string Check(string path)
    {
        if (string.IsNullOrWhiteSpace(path) || !Path.IsPathFullyQualified(path))
            throw new OperationFailedException(ErrorCodes.InvalidArgument, $"a storage path must be absolute, got '{path}'");
        // A NUL ends the path at the kernel; a newline or tab makes a folder no operator can type and breaks line-based records.
        if (path.Any(char.IsControl))
            throw new OperationFailedException(ErrorCodes.InvalidArgument, "a storage path must not contain control characters (NUL, newline, tab…)");
        var resolved = Resolve(path);
        if (_roots.Select(Resolve).Any(root => IsWithin(resolved, root))) return resolved;
        var allowed = _roots.Count == 0 ? "none" : string.Join(", ", _roots);
        var shown = resolved == Path.TrimEndingDirectorySeparator(path) ? $"'{path}'" : $"'{path}' (which leads to {resolved})";
        throw new OperationFailedException(ErrorCodes.PathNotAllowed,
            $"{shown} is not under a storage root this host allows ({allowed}); a HostNode allows its --domain-root folders " +
            "and those given with --allowed-storage-roots (lsm local up: DATA/domains and each --storage-root DIR)");
    }

    public bool Allows(string path)
    {
        try
        {
            Check(path);
            return true;
        }
        catch (OperationFailedException)
        {
            return false;
        }
    }

    /// <summary>
    /// The path with every <c>.</c> and <c>..</c> applied and every symlink among its existing components replaced by
    /// its target, component by component as the kernel walks it (so <c>link/..</c> is the parent of the link's
    /// target, not the folder holding the link). Components that do not exist yet are kept as they are.
    /// </summary>
    public static string Resolve(string path)
    {
        if (!Path.IsPathFullyQualified(path))
            throw new OperationFailedException(ErrorCodes.InvalidArgument, $"a storage path must be absolute, got '{path}'");
        var pending = new Stack<string>(Components(path).Reverse());
        var resolved = "/";
        var links = 0;
        while (pending.TryPop(out var part))
        {
            if (part is "" or ".") continue;
            if (part == "..")
            {
                resolved = Path.GetDirectoryName(resolved) ?? "/";
                continue;
            }
            var next = Path.Join(resolved, part);
            if (new FileInfo(next).LinkTarget is { } target)
            {
                if (++links > MaxSymlinks)
                    throw new OperationFailedException(ErrorCodes.InvalidArgument, $"'{path}' follows more than {MaxSymlinks} symlinks");
                if (Path.IsPathRooted(target)) resolved = "/";
                foreach (var component in Components(target).Reverse()) pending.Push(component);
                continue;
            }
            resolved = next;
        }
        return resolved;
    }

    private static IEnumerable<string> Components(string path) => path.Split('/', StringSplitOptions.RemoveEmptyEntries);

    private static bool IsWithin(string path, string root) =>
        root == "/" || path == root || path.StartsWith(root + "/", StringComparison.Ordinal);
}
