using System.Collections.Concurrent;

namespace LiveMigration.HostNode.Storage.File;

/// <summary>
/// Empties the folders of deleted images after the delete has answered. A whole-image delete's decision is its rename to a
/// <c>_remove_me_</c> name: durable before the delete answers, and no reader lists the folder after it. What is left is
/// unlinking the files, which for a large image costs about a quarter of a second per GiB on a file system mounted with
/// <c>discard</c> (0.5–1.5 s for the copy bench's 2 GiB chain, the last step of every move), and which nobody waits for:
/// the folder's space still counts as used (<see cref="FileStorageDomain.DescribeAsync"/>) until it is gone, and a
/// create short of room waits for the unlinks first.
/// <para>
/// One remover per images folder in this process, working on one folder at a time; a sweep of the same folder in this
/// process (<see cref="FileStorageDomain.FinishInterruptedRemovals"/>) waits for the folder the remover is on, so the two
/// never unlink in one folder at once. A sweep in another process (a new SPM on another host of this machine) may: the
/// one that finds the folder gone has nothing left to do. The unlinks are not fenced by the SPM's lease: the folder's
/// name is this delete's alone, nobody reads it, and unlinking it decides nothing. A removal that fails (an I/O error) is
/// tried again after 1, 2, 4 and 8 s; one that still fails, or whose domain is unreachable (unmounted, removed), is left
/// to the sweep of the next SPM to start, as a crash right after the rename always was, and <see cref="Failed"/> says so.
/// </para>
/// </summary>
internal sealed class ImageFolderRemover
{
    private static readonly ConcurrentDictionary<string, ImageFolderRemover> ByImagesPath = new(StringComparer.Ordinal);
    private static readonly TimeSpan FirstRetry = TimeSpan.FromSeconds(1);
    private const int Attempts = 5;

    /// <summary>Told each folder left to the next SPM's sweep, and why (the SPM logs it).</summary>
    public static event Action<string, Exception>? Failed;

    private readonly string _imagesPath;
    private readonly SemaphoreSlim _oneAtATime = new(1, 1);
    private readonly Lock _gate = new();
    private readonly List<string> _pending = [];
    private bool _running;
    private Task _worker = Task.CompletedTask;

    private ImageFolderRemover(string imagesPath) => _imagesPath = imagesPath;

    public static ImageFolderRemover For(string imagesPath) => ByImagesPath.GetOrAdd(Path.GetFullPath(imagesPath), path => new ImageFolderRemover(path));

    /// <summary>Completes when every folder handed to any remover of this process before the call is gone.</summary>
    public static Task AllIdleAsync() => Task.WhenAll(ByImagesPath.Values.Select(remover => remover.IdleAsync()));

    /// <summary>Hands over a folder already renamed away; returns at once.</summary>
    public void RemoveLater(string folder)
    {
        lock (_gate)
        {
            _pending.Add(folder);
            if (_running) return;
            _running = true;
            _worker = Task.Run(WorkAsync);
        }
    }

    /// <summary>Completes when every folder handed over before the call is gone.</summary>
    public Task IdleAsync()
    {
        lock (_gate) return _worker;
    }

    /// <summary>Removes the folder now, on the caller's thread; false when it is still there (the error is thrown when <paramref name="throwOnError"/>).</summary>
    public bool RemoveNow(string folder, bool throwOnError = false) => Exclusively(() => RemoveOne(folder, throwOnError));

    /// <summary>
    /// Removes every folder named <paramref name="prefix"/>… under the images folder (what a crash, or a removal given up,
    /// left), while no removal of this remover runs; returns how many are gone. <paramref name="failed"/> is told each one
    /// it could not remove and the rest are still tried; without it the first error is thrown.
    /// </summary>
    public int Sweep(string prefix, Action<string, Exception>? failed, CancellationToken ct) => Exclusively(() =>
    {
        var gone = 0;
        foreach (var folder in Directory.EnumerateDirectories(_imagesPath, prefix + "*").ToList())
        {
            if (ct.IsCancellationRequested) break;
            if (new DirectoryInfo(folder).LinkTarget is not null) continue; // never followed
            try
            {
                if (RemoveOne(folder, throwOnError: true)) gone++;
            }
            catch (Exception e) when (failed is not null && e is IOException or UnauthorizedAccessException)
            {
                failed(folder, e);
            }
        }
        return gone;
    });

    /// <summary>Runs <paramref name="work"/> while no removal of this remover runs.</summary>
    public T Exclusively<T>(Func<T> work)
    {
        _oneAtATime.Wait();
        try
        {
            return work();
        }
        finally
        {
            _oneAtATime.Release();
        }
    }

    private bool RemoveOne(string folder, bool throwOnError)
    {
        try
        {
            Directory.Delete(folder, recursive: true);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // Gone while the domain is there: another process's sweep took it meanwhile.
            if (Directory.Exists(_imagesPath) && !Directory.Exists(folder)) return true;
            if (throwOnError) throw;
            return false;
        }
        try
        {
            Posix.FsyncDirectory(_imagesPath);
        }
        catch (Exception) when (!throwOnError)
        {
            // the rename that made the folder unreadable was made durable before; its rmdir need not be
        }
        return true;
    }

    private async Task WorkAsync()
    {
        var attempts = new Dictionary<string, int>(StringComparer.Ordinal);
        var wait = FirstRetry;
        var stopped = false;
        try
        {
            while (true)
            {
                List<string> batch;
                lock (_gate)
                {
                    if (_pending.Count == 0)
                    {
                        // under the same lock as the hand-over's look at _running, so no folder is handed to a worker that ends
                        _running = false;
                        stopped = true;
                        return;
                    }
                    batch = [.. _pending];
                }
                var done = new HashSet<string>(StringComparer.Ordinal);
                foreach (var folder in batch)
                {
                    Exception? why = null;
                    try
                    {
                        if (RemoveNow(folder)) done.Add(folder);
                        else if (!Directory.Exists(_imagesPath))
                            why = new DirectoryNotFoundException($"the domain's images folder {_imagesPath} is not there (unmounted or removed)");
                    }
                    catch (Exception e)
                    {
                        why = e; // whatever it was, the folder stays where the next SPM's sweep finds it
                    }
                    attempts[folder] = attempts.GetValueOrDefault(folder) + 1;
                    if (done.Contains(folder) || why is null && attempts[folder] < Attempts) continue;
                    done.Add(folder);
                    try
                    {
                        Failed?.Invoke(folder, why ?? new IOException($"{Attempts} attempts to unlink it failed"));
                    }
                    catch (Exception)
                    {
                        // a listener's error changes nothing here
                    }
                }
                lock (_gate) _pending.RemoveAll(done.Contains);
                if (done.Count == batch.Count)
                {
                    wait = FirstRetry;
                    continue;
                }
                await Task.Delay(wait);
                wait *= 2;
            }
        }
        finally
        {
            // Ended by an error with folders still handed over: the next hand-over starts a worker again.
            if (!stopped)
                lock (_gate) _running = false;
        }
    }
}
