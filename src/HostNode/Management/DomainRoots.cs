using LiveMigration.HostNode.Storage;
using LiveMigration.HostNode.Storage.File;
using LiveMigration.Shared.Model;

namespace LiveMigration.HostNode.Management;

/// <summary>
/// The domain roots a host learned at runtime (a domain created through the API under a folder that is not one of its
/// configured roots), kept one per line in <c>&lt;data dir&gt;/domain-roots</c> so the host attaches them again after a restart.
/// </summary>
public sealed class DomainRoots(string dataDirectory)
{
    private static readonly SemaphoreSlim FileLock = new(1, 1);

    public string FilePath { get; } = Path.Combine(dataDirectory, "domain-roots");

    public IReadOnlyList<string> Remembered() =>
        File.Exists(FilePath)
            ? File.ReadAllLines(FilePath).Select(l => l.Trim()).Where(l => l.Length > 0 && Path.IsPathFullyQualified(l)).Distinct().ToList()
            : [];

    /// <summary>Adds a root to the file (once), written to a temporary file and renamed, so a crash leaves the old list or the new one.</summary>
    public async Task RememberAsync(string root, CancellationToken ct = default)
    {
        root = Path.GetFullPath(root);
        await FileLock.WaitAsync(ct);
        try
        {
            var roots = Remembered();
            if (roots.Contains(root)) return;
            Directory.CreateDirectory(Path.GetDirectoryName(FilePath)!);
            var temporary = FilePath + ".tmp";
            await File.WriteAllLinesAsync(temporary, roots.Append(root), ct);
            File.Move(temporary, FilePath, overwrite: true);
        }
        finally
        {
            FileLock.Release();
        }
    }

    /// <summary>
    /// Attaches every file domain found under the remembered roots that the pool does not hold yet; returns how many.
    /// A remembered root the host no longer allows (its configuration changed) is skipped and named to <paramref name="skipped"/>.
    /// </summary>
    public async Task<int> AttachRememberedAsync(StoragePool pool, Action<string>? skipped = null, CancellationToken ct = default)
    {
        var attached = 0;
        foreach (var root in Remembered())
        {
            if (!pool.AllowedRoots.Allows(root))
            {
                skipped?.Invoke(root);
                continue;
            }
            attached += await AttachAllUnderAsync(root, pool, ct);
        }
        return attached;
    }

    /// <summary>
    /// Attaches the domains under <paramref name="root"/> the pool does not hold yet, as its <see cref="StoragePool.DomainFactory"/> finds them.
    /// The one way a host attaches domains at runtime: a root the host does not allow is refused (PATH_NOT_ALLOWED), so
    /// an announcement from elsewhere cannot make it open, and later write, a folder outside its storage roots.
    /// </summary>
    public static async Task<int> AttachAllUnderAsync(string root, StoragePool pool, CancellationToken ct = default)
    {
        root = pool.AllowedRoots.Check(root);
        var found = await pool.DomainFactory.FindUnderAsync(root, pool.Domains.Select(d => d.Id).ToHashSet(), ct);
        foreach (var domain in found) pool.Attach(domain);
        return found.Count;
    }
}
