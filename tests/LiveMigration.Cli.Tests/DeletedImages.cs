namespace LiveMigration.Cli.Tests;

/// <summary>
/// A host unlinks a deleted image's files after the delete answered (the source of a move is renamed to a
/// <c>_remove_me_</c> folder in the step, emptied after `completed`). A test that looks into a domain's folder after a
/// move waits for that first: a folder still being emptied is not a leftover, but one still there after
/// <see cref="Patience"/> is.
/// </summary>
public static class DeletedImages
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(30);

    /// <summary>Waits until no domain folder under the <paramref name="storageRoots"/> holds a deleted image's folder.</summary>
    public static async Task AwaitUnlinkedAsync(params string[] storageRoots)
    {
        var deadline = DateTime.UtcNow + Patience;
        while (Remaining(storageRoots) is { Count: > 0 } left)
        {
            if (DateTime.UtcNow > deadline)
                throw new Xunit.Sdk.XunitException($"deleted images not unlinked {Patience.TotalSeconds:0} s after their delete: {string.Join(", ", left)}");
            await Task.Delay(50);
        }
    }

    private static List<string> Remaining(IEnumerable<string> storageRoots) =>
        storageRoots.Where(Directory.Exists)
            .SelectMany(Directory.EnumerateDirectories)
            .Select(domain => Path.Combine(domain, "images"))
            .Where(Directory.Exists)
            .SelectMany(images => Directory.EnumerateDirectories(images, "_remove_me_*"))
            .ToList();
}
